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
from histo.data.checks import label_counts, slide_label_problems
from histo.data.config import DataConfig, FrameSource, ImageSource
from histo.data.datasets import ImageTileDataset, SlideRef, SlideTileDataset
from histo.data.frames import FrameRecord, LabelProblem, read_frame_source, read_image_source
from histo.data.image_tiles import FrameTileDataset, plan_tiles
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
    """Tiles for training and evaluation, split by slide, as batches of training samples (docs/formats.md)."""

    def __init__(self, config: DataConfig, input_spec: InputSpec):
        super().__init__()
        self.config, self.input_spec = config, input_spec
        self.datasets: dict[str, Any] = {}  # split -> a histo tile dataset or a ConcatDataset of them
        self.split_table: pd.DataFrame | None = None  # one row per slide / tile group: split, n_tiles
        self.parts: list[tuple[str, str, Dataset]] = []  # (split, source name, dataset) of every part of every split
        self.label_problems: list[LabelProblem] = []  # annotations left out: unknown class, outside, on glass

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
        frames = self._real_records()
        groups = [r.group for r in records] + list(tiles["group"]) + [f.group for f in frames]
        explicit = [r.split for r in records] + list(tiles["split"]) + [f.split for f in frames]
        splits = assign_splits(groups, explicit, cfg.split)
        n_sl, n_ti = len(records), len(tiles)
        slide_splits, tile_splits = splits[:n_sl], np.array(splits[n_sl:n_sl + n_ti], dtype=object)
        frame_splits = splits[n_sl + n_ti:]
        normaliser = self._normaliser()
        augment = build_pipeline(cfg.augment)
        rows = []
        for split in SPLITS:
            maker = SampleMaker(spec, augment if split == "train" else None, normaliser)
            parts: list[Dataset] = []
            for kind in ("slides", "phantoms"):
                recs = [r for r, s in zip(records, slide_splits) if s == split and r.key.startswith(f"data.{kind}")]
                if not recs:
                    continue
                ds = self._slide_dataset(recs, maker, train=split == "train")
                if len(ds):
                    parts.append(ds)
                    self.parts.append((split, kind, ds))
                for k, ref in enumerate(ds.slides):
                    rows.append({"split": split, "source": "slide", "name": ref.name, "n_tiles": int((ds.slide_index == k).sum())})
            sel = tiles[tile_splits == split] if len(tiles) else tiles
            if len(sel):
                parts.append(ImageTileDataset(sel["path"], sel["pattern"].to_numpy(), sel["necrosis"].to_numpy(),
                                              list(sel["slide"]), maker, resize=cfg.tiles_resize))
                self.parts.append((split, "tiles_csv", parts[-1]))
                for g, n in sel.groupby("group").size().items():
                    rows.append({"split": split, "source": "tiles_csv", "name": g, "n_tiles": int(n)})
            for fds in self._frame_datasets([f for f, s in zip(frames, frame_splits) if s == split], maker, split == "train"):
                parts.append(fds)
                self.parts.append((split, fds.source, fds))
                for g in sorted(set(fds.group_names())):
                    rows.append({"split": split, "source": fds.source, "name": g,
                                 "n_tiles": int(sum(1 for x in fds.group_names() if x == g))})
            if parts:
                self.datasets[split] = parts[0] if len(parts) == 1 else ConcatDataset(parts)
        self.split_table = pd.DataFrame(rows, columns=["split", "source", "name", "n_tiles"])
        if stage in (None, "fit") and ("train" not in self.datasets or len(self.datasets["train"]) == 0):
            raise ConfigError("data: no labelled training tiles (check the sources, labels and split fractions)")

    def _real_records(self) -> list[FrameRecord]:
        """Frames and class-labelled images of data.frames / data.images (their problems kept in label_problems)."""
        out: list[FrameRecord] = []
        for i in range(len(self.config.frames)):
            recs, probs = read_frame_source(self.config, i)
            out += recs
            self.label_problems += probs
        for i in range(len(self.config.images)):
            recs, probs = read_image_source(self.config, i)
            out += recs
            self.label_problems += probs
        return out

    def _frame_datasets(self, frames: list[FrameRecord], maker: SampleMaker, train: bool) -> list[FrameTileDataset]:
        """One FrameTileDataset per source of `frames`, tiled at the input spec (training stride only in train)."""
        cfg, t = self.config, self.input_spec.tile_px
        sources: dict[str, FrameSource | ImageSource] = {s.name: s for s in cfg.frames}
        sources.update({s.name: s for s in cfg.images})
        out = []
        for name in dict.fromkeys(f.source for f in frames):
            src = sources[name]
            stride = min(src.stride_px or cfg.stride_px or t, t) if train else t
            planned = plan_tiles([f for f in frames if f.source == name], self.input_spec, stride, src.min_tissue_fraction)
            self.label_problems += planned.problems
            if len(planned.index):
                out.append(FrameTileDataset(planned, maker, name, cfg.image_cache_mb))
            else:
                log.warning("%s: no usable tiles", name)
        return out

    @property
    def label_counts(self) -> pd.DataFrame:
        """Tiles per split, source, head and label (see histo.data.checks.label_counts); after setup()."""
        return label_counts(self.parts, self.input_spec.pattern_classes)

    def _slide_dataset(self, recs: list, maker: SampleMaker, train: bool) -> SlideTileDataset:
        cfg, spec = self.config, self.input_spec
        stride = min(cfg.stride_px or spec.tile_px, spec.tile_px) if train else spec.tile_px
        grid_cfg = TilingConfig(grid=GridConfig(tile_px=spec.tile_px, mpp=spec.mpp, overlap_px=spec.tile_px - stride,
                                                min_tissue_fraction=cfg.min_tissue_fraction,
                                                mask_mpp=max(cfg.mask_mpp, spec.mpp)))
        refs: list[SlideRef] = []
        idx: list[np.ndarray] = []
        boxes: list[np.ndarray] = []
        pattern: list[np.ndarray] = []
        necrosis: list[np.ndarray] = []
        labelled: list[np.ndarray] = []
        points: list[np.ndarray] = []
        for r in recs:
            with open_slide(r.path, mpp=r.mpp) as slide:
                grid, mask = plan_grid(slide, grid_cfg)
            table = grid.table
            if r.annotations is not None:
                ann = read_geojson(r.annotations)
                self.label_problems += slide_label_problems(ann, cfg.labels, mask, r.key,
                                                            check_classes=not r.key.startswith("data.phantoms"))
                lab = label_tiles(grid, ann, cfg.labels, spec.pattern_classes)
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
        def cat(xs: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
            return np.concatenate(xs) if xs else np.zeros(shape)

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
        sampler = WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double).tolist(), cfg.samples_per_epoch or len(ds),
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
            parts: list[Any] = list(ds.datasets) if isinstance(ds, ConcatDataset) else [ds]
            for p in parts:
                p.close()
