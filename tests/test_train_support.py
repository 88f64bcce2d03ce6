"""A fake LightningDataModule giving contract-B batches from random tensors with a learnable signal.

Imported by the other tests/test_train*.py files (and by the DDP child script); the test here checks the
fake itself honours contract B, so the training tests exercise the real batch format.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

K_MAX = 32


def gaussian_heatmap(points: torch.Tensor, tile_px: int, stride: int, sigma_cells: float = 1.0) -> torch.Tensor:
    """(1, H/s, W/s) heatmap with a unit Gaussian peak at each (x, y) tile-pixel point (max over points)."""
    h = tile_px // stride
    cy, cx = torch.meshgrid((torch.arange(h) + 0.5) * stride, (torch.arange(h) + 0.5) * stride, indexing="ij")
    out = torch.zeros(h, h)
    for x, y in points.tolist():
        d2 = ((cx - x) ** 2 + (cy - y) ** 2) / (stride * sigma_cells) ** 2
        out = torch.maximum(out, torch.exp(-0.5 * d2))
    return out[None]


class FakeTiles(Dataset):
    """Tiles whose pattern is coded in the red mean, necrosis in the green mean, mitoses as dark 5x5 blobs."""

    def __init__(self, n: int, tile_px: int = 64, stride: int = 4, n_classes: int = 3, seed: int = 0,
                 unlabelled_fraction: float = 0.25):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            img = torch.rand(3, tile_px, tile_px, generator=g) * 0.3
            cls = int(torch.randint(0, n_classes, (1,), generator=g))
            nec = float(torch.rand(1, generator=g) < 0.5)
            img[0] += 0.6 * cls / max(1, n_classes - 1)
            img[1] += 0.5 * nec
            n_mit = int(torch.randint(0, 3, (1,), generator=g))
            pts = (torch.rand(n_mit, 2, generator=g) * (tile_px - 16) + 8).round()
            for x, y in pts.long().tolist():
                img[:, y - 2:y + 3, x - 2:x + 3] = -1.0
            padded = torch.full((K_MAX, 2), math.nan)
            padded[:n_mit] = pts.float()
            unl = torch.rand(3, generator=g) < unlabelled_fraction
            self.items.append({
                "image": img.float(),
                "pattern": torch.tensor(-1 if unl[0] else cls, dtype=torch.long),
                "necrosis": torch.tensor(-1.0 if unl[1] else nec, dtype=torch.float32),
                "mitosis_heatmap": gaussian_heatmap(pts, tile_px, stride) if not unl[2] else torch.zeros(1, tile_px // stride, tile_px // stride),
                "mitosis_labelled": torch.tensor(not bool(unl[2])),
                "mitosis_points": padded,
                "slide": f"fake_{i % 3}",
            })

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


class FakeTileDataModule(pl.LightningDataModule):
    """Contract-B batches from FakeTiles; same data every call for a given seed."""

    def __init__(self, n_train: int = 32, n_val: int = 16, batch_size: int = 8, tile_px: int = 64, stride: int = 4,
                 n_classes: int = 3, seed: int = 0):
        super().__init__()
        self.kw = dict(tile_px=tile_px, stride=stride, n_classes=n_classes)
        self.n_train, self.n_val, self.batch_size, self.seed = n_train, n_val, batch_size, seed

    def setup(self, stage: str | None = None) -> None:
        self.train_set = FakeTiles(self.n_train, seed=self.seed, **self.kw)
        self.val_set = FakeTiles(self.n_val, seed=self.seed + 1000, unlabelled_fraction=0.1, **self.kw)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=0)


def test_fake_batches_follow_contract_b():
    dm = FakeTileDataModule(n_train=8, batch_size=4)
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert b["image"].dtype == torch.float32 and b["image"].shape == (4, 3, 64, 64)
    assert b["pattern"].dtype == torch.int64 and b["pattern"].shape == (4,)
    assert b["necrosis"].dtype == torch.float32 and b["mitosis_labelled"].dtype == torch.bool
    assert b["mitosis_heatmap"].shape == (4, 1, 16, 16) and b["mitosis_points"].shape == (4, K_MAX, 2)
    assert isinstance(b["slide"], list) and len(b["slide"]) == 4
    # A heatmap peak sits at each point: the cell holding the point is the maximum (close to 1).
    hm = gaussian_heatmap(torch.tensor([[10.0, 22.0]]), 64, 4)
    assert tuple((hm[0] == hm.max()).nonzero()[0].tolist()) == (5, 2) and hm.max() > 0.9
