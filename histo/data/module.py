"""`TileDataModule`: sources → tile grids → labels → split by slide → DataLoaders of contract-B batches."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Dataset, WeightedRandomSampler

from histo.annotations import label_tiles, read_geojson
from histo.data.config import DataConfig
from histo.data.datasets import ImageTileDataset, SlideRef, SlideTileDataset
from histo.data.sample import InputSpec, SampleMaker
from histo.data.sources import SPLITS, assign_splits, check_slide_files, phantom_records, slide_records, tile_table
from histo.data.stain import make_normaliser
from histo.data.transforms import build_pipeline
from histo.errors import ConfigError
from histo.slide import open_slide
from histo.tiling import GridConfig, TilingConfig, plan_grid

log = logging.getLogger(__name__)


def sample_weights(pattern: np.ndarray, necrosis: np.ndarray, n_mitoses: np.ndarray, balance: str,
                   mitosis_oversample: float) -> np.ndarray:
    """Per-tile sampling weights: inverse class frequency of the balanced label (unlabelled tiles keep weight 1)."""
    w = np.ones(len(pattern), np.float64)
    labels = {"pattern": np.asarray(pattern), "necrosis": np.asarray(necrosis)}.get(balance)
    if labels is not None:
        known = labels >= 0
        classes, counts = np.unique(labels[known], return_counts=True)
        # Labelled tiles keep their total mass, shared equally among classes.
        for c, n in zip(classes, counts):
            w[labels == c] = known.sum() / (len(classes) * n)
    w[np.asarray(n_mitoses) > 0] *= mitosis_oversample
    return w


class TileDataModule(pl.LightningDataModule):
    """Tiles for training and evaluation, split by slide, as batches of contract B (see histo.data)."""

    def __init__(self, config: DataConfig, input_spec: InputSpec):
        super().__init__()
        self.config, self.input_spec = config, input_spec
        self.datasets: dict[str, Dataset] = {}
        self.split_table: pd.DataFrame | None = None  # one row per slide / tile group: split, n_tiles

    # -- preparation -------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Write missing phantoms and check that every listed file exists (ConfigError naming key and file)."""
        phantom_records(self.config, generate=True)
        self._check_files()

    def _check_files(self) -> list:
        records = slide_records(self.config) + phantom_records(self.config, generate=False)
        check_slide_files(records)
        ref = self.config.normalise.reference
        if ref is not None and not self.config.resolve(ref).is_file():
            raise ConfigError(f"data.normalise.reference: reference tile not found: {self.config.resolve(ref)}")
        return records

    def _normaliser(self):
        n = self.config.normalise
        ref = None
        if n.reference is not None and n.method != "none":
            with Image.open(self.config.resolve(n.reference)) as im:
                ref = np.asarray(im.convert("RGB"))
        return make_normaliser(n.method, ref)

    def setup(self, stage: str | None = None) -> None:
        """Plan grids, label tiles and split by slide (once; later calls reuse the datasets)."""
        if self.datasets:
            return
        cfg, spec = self.config, self.input_spec
        records = self._check_files()
        tiles = tile_table(cfg, spec.pattern_classes)
        groups = [r.group for r in records] + list(tiles["group"])
        explicit = [r.split for r in records] + list(tiles["split"])
        splits = assign_splits(groups, explicit, cfg.split)
        slide_splits, tile_splits = splits[:len(records)], np.array(splits[len(records):], dtype=object)
        normaliser = self._normaliser()
        augment = build_pipeline(cfg.augment)
        rows = []
        for split in SPLITS:
            maker = SampleMaker(spec, augment if split == "train" else None, normaliser)
            parts: list[Dataset] = []
            recs = [r for r, s in zip(records, slide_splits) if s == split]
            if recs:
                ds = self._slide_dataset(recs, maker, train=split == "train")
                parts.append(ds)
                for k, ref in enumerate(ds.slides):
                    rows.append({"split": split, "source": "slide", "name": ref.name, "n_tiles": int((ds.slide_index == k).sum())})
            sel = tiles[tile_splits == split] if len(tiles) else tiles
            if len(sel):
                parts.append(ImageTileDataset(sel["path"], sel["pattern"].to_numpy(), sel["necrosis"].to_numpy(),
                                              list(sel["slide"]), maker, resize=cfg.tiles_resize))
                for g, n in sel.groupby("group").size().items():
                    rows.append({"split": split, "source": "tiles_csv", "name": g, "n_tiles": int(n)})
            if parts:
                self.datasets[split] = parts[0] if len(parts) == 1 else ConcatDataset(parts)
        self.split_table = pd.DataFrame(rows, columns=["split", "source", "name", "n_tiles"])
        if stage in (None, "fit") and ("train" not in self.datasets or len(self.datasets["train"]) == 0):
            raise ConfigError("data: no labelled training tiles (check the sources, labels and split fractions)")

    def _slide_dataset(self, recs: list, maker: SampleMaker, train: bool) -> SlideTileDataset:
        cfg, spec = self.config, self.input_spec
        stride = min(cfg.stride_px or spec.tile_px, spec.tile_px) if train else spec.tile_px
        grid_cfg = TilingConfig(grid=GridConfig(tile_px=spec.tile_px, mpp=spec.mpp, overlap_px=spec.tile_px - stride,
                                                min_tissue_fraction=cfg.min_tissue_fraction,
                                                mask_mpp=max(cfg.mask_mpp, spec.mpp)))
        refs, idx, boxes, pattern, necrosis, labelled, points = [], [], [], [], [], [], []
        for r in recs:
            with open_slide(r.path, mpp=r.mpp) as slide:
                grid, _ = plan_grid(slide, grid_cfg)
            table = grid.table
            if r.annotations is not None:
                lab = label_tiles(grid, read_geojson(r.annotations), cfg.labels, spec.pattern_classes)
                table, pts = lab.table, lab.points
                mit = np.full(len(table), r.mitoses_labelled)
            else:
                table = table.assign(pattern=-1, necrosis=-1.0, keep=True)
                pts, mit = [np.zeros((0, 2))] * len(table), np.zeros(len(table), bool)
            # Tiles on ignore classes go; so do tiles that carry no label of any kind.
            useful = table["keep"].to_numpy() & ((table["pattern"].to_numpy() >= 0) | (table["necrosis"].to_numpy() >= 0) | mit)
            k = np.flatnonzero(useful)
            if len(k) == 0:
                log.warning("%s: no usable tiles", r.path)
                continue
            refs.append(SlideRef(str(r.path), r.mpp, r.path.stem))
            idx.append(np.full(len(k), len(refs) - 1))
            boxes.append(table[["x", "y", "w", "h"]].to_numpy(np.float64)[k])
            pattern.append(table["pattern"].to_numpy()[k])
            necrosis.append(table["necrosis"].to_numpy()[k])
            labelled.append(mit[k])
            points.extend(pts[i] for i in k)
        cat = (lambda xs, shape: np.concatenate(xs) if xs else np.zeros(shape))
        return SlideTileDataset(refs, cat(idx, (0,)), cat(boxes, (0, 4)), cat(pattern, (0,)), cat(necrosis, (0,)),
                                cat(labelled, (0,)).astype(bool), points, maker)

    # -- loaders -----------------------------------------------------------------------------------------
    def _labels(self, ds: Dataset, name: str) -> np.ndarray:
        parts = ds.datasets if isinstance(ds, ConcatDataset) else [ds]
        return np.concatenate([getattr(p, name) for p in parts])

    def _loader(self, ds: Dataset, **kw: Any) -> DataLoader:
        n = self.config.num_workers
        return DataLoader(ds, batch_size=self.config.batch_size, num_workers=n, pin_memory=torch.cuda.is_available(),
                          persistent_workers=n > 0, **kw)

    def train_dataloader(self) -> DataLoader:
        """Training batches: shuffled, or drawn by the class-balancing sampler."""
        ds = self.datasets["train"]
        cfg = self.config
        drop_last = len(ds) > cfg.batch_size  # a last batch of one breaks batch norm
        if cfg.balance == "none" and cfg.mitosis_oversample == 1.0 and cfg.samples_per_epoch is None:
            g = torch.Generator().manual_seed(cfg.seed)
            return self._loader(ds, shuffle=True, drop_last=drop_last, generator=g)
        w = sample_weights(self._labels(ds, "pattern"), self._labels(ds, "necrosis"), self._labels(ds, "n_mitoses"),
                           cfg.balance, cfg.mitosis_oversample)
        sampler = WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double), cfg.samples_per_epoch or len(ds),
                                        replacement=True, generator=torch.Generator().manual_seed(cfg.seed))
        return self._loader(ds, sampler=sampler, drop_last=drop_last)

    def _eval_loader(self, *names: str) -> DataLoader | list:
        for name in names:
            if name in self.datasets:
                return self._loader(self.datasets[name], shuffle=False)
        return []  # Lightning skips a stage with no loader

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches in a fixed order."""
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader | list:
        """Test batches in a fixed order."""
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader | list:
        """The test split (else validation) in a fixed order."""
        return self._eval_loader("test", "val")

    def teardown(self, stage: str | None = None) -> None:
        """Close slide handles this process opened (workers' close with their process)."""
        for ds in self.datasets.values():
            for p in ds.datasets if isinstance(ds, ConcatDataset) else [ds]:
                p.close()
