"""End to end: `histo train` on tiny phantom slides through histo.data's TileDataModule, then load the model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from histo.cli import main
from histo.models import load_model

torch.set_num_threads(1)


@pytest.mark.slow
def test_histo_train_on_tiny_phantoms_end_to_end(tmp_path, capsys):
    from histo.data import TINY_SPEC

    spec = tmp_path / "tiny_spec.yaml"
    spec.write_text(yaml.safe_dump(TINY_SPEC, sort_keys=False))
    cfg = {
        "seed": 0,
        "model": {"backbone": "tiny", "tile_px": 64, "mpp": 1.0,
                  "heads": {"pattern": {}, "necrosis": {}, "mitosis": {"stride_px": 4, "width": 16}}},
        "data": {"phantoms": {"specs": [str(spec)], "seeds": [0, 1], "size_px": [1024, 1024],
                              "cache_dir": str(tmp_path / "phantoms")},
                 "split": {"val_fraction": 0.5, "seed": 0}, "batch_size": 16, "num_workers": 0},
        "trainer": {"max_epochs": 1, "progress_bar": False},
        "early_stop": {"patience": 0},
        "output": {"dir": str(tmp_path / "runs"), "name": "phantom-e2e"},
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "-c", str(path), "--set", "optim.lr=0.002"]) == 0
    captured = capsys.readouterr()
    card_path = Path(captured.out.strip().splitlines()[-1])
    assert card_path.name == "phantom-e2e.card.json" and card_path.is_file()
    assert "model exported to" in captured.err
    run_dir = card_path.parent.parent
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 0.002 and saved["data"]["phantoms"]["seeds"] == [0, 1]
    net, card = load_model(card_path)
    assert card.tile_px == 64 and card.mpp == 1.0 and card.classes == ["none", "fascicular", "haphazard"]
    assert "loss" in card.metrics and all(v == v for v in card.metrics.values())  # finite, no NaN
    with torch.no_grad():
        out = net(torch.randn(2, 3, 64, 64))
    assert out["mitosis"].shape == (2, 1, 16, 16)
    # the run's metrics.csv has train and val rows
    import pandas as pd

    log = pd.read_csv(run_dir / "metrics.csv")
    assert log["val/loss"].notna().any() and log["train/loss_epoch"].notna().any()
