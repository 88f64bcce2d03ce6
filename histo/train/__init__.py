"""Training of tile models from YAML configs: the LightningModule, masked losses, metrics and ``fit``.

    from histo.train import fit, load_train_config
    result = fit(load_train_config("configs/train/phantom_multitask.yaml"))
    model, card = histo.models.load_model(result.card_path)

Lightning ``.ckpt`` files written under ``checkpoints/`` are pickles made by this code for resuming
(``fit(..., resume_from=...)``) only; the exported model is safetensors + a JSON card, never a pickle.
"""

from histo.train.config import (
    CheckpointSection,
    EarlyStopSection,
    LossSection,
    LossWeights,
    MitosisLoss,
    ModelSection,
    OptimSection,
    OutputSection,
    TrainConfig,
    TrainerSection,
    load_train_config,
    monitorable,
)
from histo.train.fit import (
    FitResult,
    build_datamodule,
    build_module,
    build_net,
    export_model,
    fit,
    input_spec,
    make_card,
    resolve_trainer_args,
)
from histo.train.losses import mitosis_loss, necrosis_loss, pattern_loss
from histo.train.metrics import MIDOG_RADIUS_UM, MitosisF1, match_points
from histo.train.module import METRIC_NAMES, MultiTaskModule

__all__ = [
    "CheckpointSection", "EarlyStopSection", "FitResult", "LossSection", "LossWeights", "METRIC_NAMES",
    "MIDOG_RADIUS_UM", "MitosisF1", "MitosisLoss", "ModelSection", "MultiTaskModule", "OptimSection",
    "OutputSection", "TrainConfig", "TrainerSection", "build_datamodule", "build_module", "build_net",
    "export_model", "fit", "input_spec", "load_train_config", "make_card", "match_points", "mitosis_loss",
    "monitorable", "necrosis_loss", "pattern_loss", "resolve_trainer_args",
]
