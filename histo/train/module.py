"""MultiTaskModule: the LightningModule wrapping a MultiTaskNet with masked per-task losses and validation metrics."""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytorch_lightning as pl
import torch
from torchmetrics.classification import BinaryAUROC, MulticlassAccuracy, MulticlassAUROC

from histo.models import MultiTaskNet, heatmaps_to_points
from histo.train.config import LossSection, OptimSection
from histo.train.losses import mitosis_loss, necrosis_loss, pattern_loss
from histo.train.metrics import MIDOG_RADIUS_UM, THRESHOLD_GRID, MitosisF1, MitosisF1Sweep, choose_threshold

# Names of the logged validation metrics (what early_stop/checkpoint can monitor besides val/loss).
METRIC_NAMES = ("val/pattern_bacc", "val/pattern_auroc", "val/necrosis_auroc", "val/mitosis_f1",
                "val/mitosis_precision", "val/mitosis_recall", "val/mitosis_f1_best")


class MultiTaskModule(pl.LightningModule):
    """Trains a :class:`MultiTaskNet` (``self.net``): weighted sum of masked task losses, AdamW + cosine.

    Batches follow the training-sample layout of docs/formats.md (``image``, ``pattern``, ``necrosis``, ``mitosis_heatmap``,
    ``mitosis_labelled``, ``mitosis_points``). Logs ``train/loss``, ``train/loss_<task>``, ``val/loss``,
    ``val/loss_<task>`` and the metrics in :data:`METRIC_NAMES` for the heads present.
    """

    def __init__(self, net: MultiTaskNet, *, mpp: float, optim: OptimSection | None = None,
                 loss: LossSection | None = None, mitosis_threshold: float = 0.5,
                 mitosis_min_distance_um: float = 4.0, match_radius_um: float = MIDOG_RADIUS_UM):
        super().__init__()
        self.net = net
        self.mpp = float(mpp)
        self.optim_cfg = optim or OptimSection()
        self.loss_cfg = loss or LossSection()
        self.mitosis_threshold = float(mitosis_threshold)
        self.mitosis_min_distance_px = float(mitosis_min_distance_um) / self.mpp
        self.heads = dict(net.heads_config)
        if "pattern" in self.heads:
            n = len(self.heads["pattern"]["classes"])
            self.val_pattern_bacc = MulticlassAccuracy(n, average="macro", ignore_index=-1)
            self.val_pattern_auroc = MulticlassAUROC(n, ignore_index=-1)
        if "necrosis" in self.heads:
            self.val_necrosis_auroc = BinaryAUROC(ignore_index=-1)
        if "mitosis" in self.heads:
            self.mitosis_stride_px = int(self.heads["mitosis"]["stride_px"])
            self.val_mitosis_f1 = MitosisF1(match_radius_um / self.mpp)
            # Detections down to the lowest grid threshold, scored at every one, to choose the operating point.
            self.val_mitosis_sweep = MitosisF1Sweep(match_radius_um / self.mpp, THRESHOLD_GRID)
        self.threshold_choice: dict[str, float] | None = None  # set by each validation epoch (see compute_metrics)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per head (see MultiTaskNet.forward)."""
        return self.net(x)

    # -- losses -------------------------------------------------------------------------------------------
    def compute_losses(self, out: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Per-task masked losses and their weighted sum under ``loss``."""
        w = self.loss_cfg.weights
        losses: dict[str, torch.Tensor] = {}
        if "pattern" in out:
            losses["pattern"] = pattern_loss(out["pattern"], batch["pattern"], self.loss_cfg.pattern_class_weights)
        if "necrosis" in out:
            losses["necrosis"] = necrosis_loss(out["necrosis"], batch["necrosis"])
        if "mitosis" in out:
            losses["mitosis"] = mitosis_loss(out["mitosis"], batch["mitosis_heatmap"], batch["mitosis_labelled"],
                                             self.loss_cfg.mitosis)
        total = sum(getattr(w, k) * v for k, v in losses.items())
        losses["loss"] = total
        return losses

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """One optimisation step's loss."""
        losses = self.compute_losses(self.net(batch["image"]), batch)
        n = batch["image"].shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, on_step=True, on_epoch=True, batch_size=n)
        for k, v in losses.items():
            if k != "loss":
                self.log(f"train/loss_{k}", v, on_step=False, on_epoch=True, batch_size=n)
        return losses["loss"]

    # -- validation ---------------------------------------------------------------------------------------
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Losses and metric updates of one validation batch."""
        out = self.net(batch["image"])
        losses = self.compute_losses(out, batch)
        n = batch["image"].shape[0]
        self.log("val/loss", losses["loss"], prog_bar=True, on_epoch=True, sync_dist=True, batch_size=n)
        for k, v in losses.items():
            if k != "loss":
                self.log(f"val/loss_{k}", v, on_epoch=True, sync_dist=True, batch_size=n)
        self.update_metrics(out, batch)

    def update_metrics(self, out: dict[str, torch.Tensor], batch: dict[str, Any]) -> None:
        """Feed the validation metrics with one batch (unlabelled tiles are ignored by each metric)."""
        if "pattern" in out:
            target = batch["pattern"].long()
            logits = out["pattern"].float()
            self.val_pattern_bacc.update(logits, target)
            self.val_pattern_auroc.update(logits.softmax(1), target)
        if "necrosis" in out:
            self.val_necrosis_auroc.update(out["necrosis"].float().sigmoid(), batch["necrosis"].round().long())
        if "mitosis" in out:
            labelled = batch["mitosis_labelled"].bool()
            logits = out["mitosis"][labelled]
            truth = batch["mitosis_points"][labelled]
            self.val_mitosis_f1.update(self.mitosis_points(logits), truth)
            low = heatmaps_to_points(logits, min(THRESHOLD_GRID), self.mitosis_min_distance_px,
                                     self.mitosis_stride_px, from_logits=True)
            self.val_mitosis_sweep.update(low, truth)

    def mitosis_points(self, logits: torch.Tensor) -> list[torch.Tensor]:
        """Predicted mitosis points (x, y, score in tile px) per tile from heatmap logits."""
        return heatmaps_to_points(logits, self.mitosis_threshold, self.mitosis_min_distance_px,
                                  self.mitosis_stride_px, from_logits=True)

    def on_validation_epoch_end(self) -> None:
        """Compute (synced across processes), log and reset the epoch's metrics."""
        for v in self.compute_metrics().items():
            self.log(*v, sync_dist=False)  # values are already synced by torchmetrics
        self.reset_metrics()

    def compute_metrics(self) -> dict[str, float]:
        """The accumulated validation metrics; a metric with no labelled tile at all is left out."""
        vals: dict[str, float] = {}
        pairs = [("val/pattern_bacc", "val_pattern_bacc"), ("val/pattern_auroc", "val_pattern_auroc"),
                 ("val/necrosis_auroc", "val_necrosis_auroc")]
        for name, attr in pairs:
            metric = getattr(self, attr, None)
            if metric is None or not metric.update_called:
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # single-class warnings: the value is still reported
                    value = float(metric.compute())
            except (IndexError, RuntimeError, ValueError):
                continue  # every tile unlabelled for this task (same on every rank: states are synced)
            if math.isfinite(value):
                vals[name] = value
        f1 = getattr(self, "val_mitosis_f1", None)
        # Detection metrics on a validation set with no true mitosis would read 1.0 and mean nothing: left out.
        if f1 is not None and f1.update_called and int(f1.tp + f1.fn) > 0:
            res = f1.compute()
            vals.update({f"val/mitosis_{k}": float(v) for k, v in res.items()})
        sweep = getattr(self, "val_mitosis_sweep", None)
        if sweep is not None and sweep.update_called:
            c = sweep.compute()
            self.threshold_choice = choose_threshold(sweep.thresholds, c["tp"].tolist(), c["fp"].tolist(),
                                                     c["fn"].tolist())
            if self.threshold_choice is not None:
                # F1 at the best threshold of the sweep: what export will use, so what model selection should watch
                vals["val/mitosis_f1_best"] = self.threshold_choice["f1"]
        return vals

    def reset_metrics(self) -> None:
        """Clear the metric states."""
        for attr in ("val_pattern_bacc", "val_pattern_auroc", "val_necrosis_auroc", "val_mitosis_f1",
                     "val_mitosis_sweep"):
            metric = getattr(self, attr, None)
            if metric is not None:
                metric.reset()

    # -- optimisation -------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        """AdamW; with scheduler 'cosine' a linear warm-up then cosine decay, stepped every batch."""
        o = self.optim_cfg
        opt = torch.optim.AdamW(self.net.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        if o.scheduler == "none":
            return opt
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warm = min(o.warmup_steps, total - 1) if total > 1 else 0

        def factor(step: int) -> float:
            if warm and step < warm:
                return (step + 1) / warm
            t = min(1.0, (step - warm) / max(1, total - warm))
            return 0.5 * (1.0 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "name": "lr"}}
