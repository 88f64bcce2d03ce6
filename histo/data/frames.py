"""Real labelled sources read from files: point/box frames (Pascal-VOC, CSV, COCO) and class-labelled images.

Both give records of image files with a native µm/px, a group (slide / case / patient) from a regex on
the file name, the split the config fixes for that group, and their labels. Annotations histo cannot
use (unknown class, outside the image) are collected as :class:`LabelProblem`s, never dropped silently.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from histo.data.config import DataConfig, FrameSource, ImageSource
from histo.errors import ConfigError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class LabelProblem:
    """One annotation histo will not train on: where it is, what is wrong (unknown_class, outside, on_glass)."""

    source: str
    file: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.source}: {self.file}: {self.kind}: {self.detail}"


@dataclass
class FrameRecord:
    """One frame: image file, size (px), mitosis points (native px), group, split and source name."""

    path: Path
    width: int
    height: int
    points: np.ndarray  # (K, 2) x, y native px of the figures
    group: str
    split: str
    source: str
    mpp: float
    mitoses_labelled: bool = True
    n_negative: int = 0  # marked non-mitotic figures (they are negatives like every unmarked cell)
    labels: dict[str, Any] = field(default_factory=dict)  # image-level labels: necrosis, pattern, mitosis


def group_of(name: str, regex: str, where: str) -> str:
    """The group of a file name: the first capture group (else the whole match) of `regex`; ConfigError when none."""
    m = re.search(regex, name)
    if m is None:
        raise ConfigError(f"{where}: group_regex {regex!r} does not match the file name {name!r}")
    return m.group(1) if m.groups() else m.group(0)


def source_split(groups: Sequence[str], src: FrameSource | ImageSource, where: str) -> list[str]:
    """The explicit split of each group: val/test groups named, the rest train (or the source's `split`)."""
    found = set(groups)
    for key in ("val_groups", "test_groups"):
        missing = [g for g in getattr(src, key) if g not in found]
        if missing:
            raise ConfigError(f"{where}.{key}: group(s) {missing} match no file of source {src.name!r} "
                              f"(groups found: {sorted(found)})")
    named = bool(src.val_groups or src.test_groups)
    out = []
    for g in groups:
        if g in src.val_groups:
            out.append("val")
        elif g in src.test_groups:
            out.append("test")
        else:
            out.append("train" if named else src.split)
    return out


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read image ({exc})") from exc


def _find_image(folder: Path, name: str, where: str) -> Path:
    """The image file `name` in `folder`, else one with the same stem and an image suffix (VOC files often say .png)."""
    p = folder / name
    if p.is_file():
        return p
    stem = Path(name).stem
    for suffix in IMAGE_SUFFIXES:
        for q in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if q.is_file():
                return q
    raise ConfigError(f"{where}: image {name!r} not found in {folder}")


def _voc(src: FrameSource, ann: Path, images: Path, where: str) -> list[tuple[Path, list[tuple[str, float, float]]]]:
    if not ann.is_dir():
        raise ConfigError(f"{where}.annotations: VOC annotations must be a folder of XML files, got {ann}")
    out = []
    for xml in sorted(ann.glob("*.xml")):
        try:
            root = ET.parse(xml).getroot()
        except ET.ParseError as exc:
            raise ConfigError(f"{where}: {xml} is not valid XML ({exc})") from exc
        fname = root.findtext("filename") or xml.stem
        objs = []
        for obj in root.iter("object"):
            box = obj.find("bndbox")
            name = (obj.findtext("name") or "").strip()
            if box is None:
                raise ConfigError(f"{where}: {xml.name}: object {name!r} has no bndbox")
            try:
                x0, y0, x1, y1 = (float(box.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax"))
            except ValueError as exc:
                raise ConfigError(f"{where}: {xml.name}: object {name!r} has a non-numeric bndbox ({exc})") from exc
            objs.append((name, (x0 + x1) / 2, (y0 + y1) / 2))  # the box centre is the figure
        out.append((_find_image(images, fname, f"{where} ({xml.name})"), objs))
    if not out:
        raise ConfigError(f"{where}.annotations: no *.xml files in {ann}")
    return out


def _csv(src: FrameSource, ann: Path, images: Path, where: str) -> list[tuple[Path, list[tuple[str, float, float]]]]:
    if not ann.is_file():
        raise ConfigError(f"{where}.annotations: CSV file not found: {ann}")
    df = pd.read_csv(ann, dtype=str, keep_default_na=False)
    df.columns = [c.strip().lower() for c in df.columns]
    missing = [c for c in ("image", "x", "y") if c not in df.columns]
    if missing:
        raise ConfigError(f"{where}.annotations: {ann} lacks column(s) {missing} (has {list(df.columns)})")
    frames: dict[str, list] = {}
    for i, row in df.iterrows():
        frame = frames.setdefault(row["image"].strip(), [])
        if row["x"].strip() == "" and row["y"].strip() == "":
            continue  # a frame listed with no figure: all its cells are negatives
        try:
            x, y = float(row["x"]), float(row["y"])
        except ValueError:
            raise ConfigError(f"{where}: {ann.name} row {i + 2}: x and y must be numbers, got {row['x']!r}, {row['y']!r}") from None
        frame.append((row.get("class", "").strip() or src.mitosis_classes[0], x, y))
    return [(_find_image(images, k, f"{where} ({ann.name})"), v) for k, v in frames.items()]


def _coco(src: FrameSource, ann: Path, images: Path, where: str) -> list[tuple[Path, list[tuple[str, float, float]]]]:
    if not ann.is_file():
        raise ConfigError(f"{where}.annotations: COCO JSON file not found: {ann}")
    try:
        data = json.loads(ann.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: {ann} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ConfigError(f"{where}: {ann} has no 'images' list (COCO / MIDOG format)")
    cats = {c["id"]: str(c.get("name", c["id"])) for c in data.get("categories", []) if isinstance(c, dict) and "id" in c}
    by_id: dict[Any, list] = {im["id"]: [] for im in data["images"]}
    for k, a in enumerate(data.get("annotations", [])):
        if a.get("image_id") not in by_id:
            raise ConfigError(f"{where}: {ann.name}: annotation {k} refers to image_id {a.get('image_id')!r}, not in 'images'")
        name = cats.get(a.get("category_id"), str(a.get("category_id")))
        if "point" in a:
            x, y = (float(v) for v in a["point"][:2])
        elif "bbox" in a:
            bx, by, bw, bh = (float(v) for v in a["bbox"][:4])
            if "bbox_format" in a and a["bbox_format"] == "xyxy":  # MIDOG 2021 writes x0, y0, x1, y1
                bw, bh = bw - bx, bh - by
            x, y = bx + bw / 2, by + bh / 2
        else:
            raise ConfigError(f"{where}: {ann.name}: annotation {k} has neither 'bbox' nor 'point'")
        by_id[a["image_id"]].append((name, x, y))
    return [(_find_image(images, str(im["file_name"]), f"{where} ({ann.name})"), by_id[im["id"]]) for im in data["images"]]


_READERS = {"voc": _voc, "csv": _csv, "coco": _coco}


def read_frame_source(cfg: DataConfig, index: int) -> tuple[list[FrameRecord], list[LabelProblem]]:
    """The frames of `data.frames[index]` with their figures (native px); problems listed, not raised."""
    src = cfg.frames[index]
    where = f"data.frames[{index}]"
    images, ann = cfg.resolve(src.images), cfg.resolve(src.annotations)
    if not images.is_dir():
        raise ConfigError(f"{where}.images: folder not found: {images}")
    raw = _READERS[src.format](src, ann, images, where)
    raw.sort(key=lambda r: r[0].name)
    if src.limit is not None:
        raw = raw[:src.limit]
    mit = {c.lower() for c in src.mitosis_classes}
    neg = {c.lower() for c in src.negative_classes}
    groups = [group_of(p.name, src.group_regex, where) for p, _ in raw]
    splits = source_split(groups, src, where)
    records, problems = [], []
    for (path, objs), g, s in zip(raw, groups, splits):
        w, h = _image_size(path)
        pts, n_neg = [], 0
        for name, x, y in objs:
            if name.lower() in neg:
                n_neg += 1
            elif name.lower() not in mit:
                problems.append(LabelProblem(src.name, path.name, "unknown_class",
                                             f"class {name!r} at ({x:.0f}, {y:.0f}) is neither in mitosis_classes "
                                             f"{src.mitosis_classes} nor in negative_classes {src.negative_classes}"))
            elif not (0 <= x < w and 0 <= y < h):
                problems.append(LabelProblem(src.name, path.name, "outside",
                                             f"{name!r} at ({x:.0f}, {y:.0f}) lies outside the {w}x{h} px image"))
            else:
                pts.append((x, y))
        records.append(FrameRecord(path, w, h, np.asarray(pts, np.float64).reshape(-1, 2), g, s, src.name, src.mpp,
                                   src.mitoses_labelled, n_neg))
    return records, problems


def read_image_source(cfg: DataConfig, index: int) -> tuple[list[FrameRecord], list[LabelProblem]]:
    """The images of `data.images[index]` with the labels their class maps to; unknown classes listed as problems."""
    src = cfg.images[index]
    where = f"data.images[{index}]"
    root = cfg.resolve(src.root)
    if not root.is_dir():
        raise ConfigError(f"{where}.root: folder not found: {root}")
    paths = sorted(p for p in root.glob(src.glob) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ConfigError(f"{where}: no image files match {src.glob!r} under {root}")
    classes = []
    for p in paths:
        if src.class_from == "folder":
            classes.append(p.parent.name)
            continue
        m = re.search(src.prefix_regex, p.name)
        if m is None:
            raise ConfigError(f"{where}: prefix_regex {src.prefix_regex!r} does not match the file name {p.name!r}")
        classes.append(m.group(1) if m.groups() else m.group(0))
    keep = [k for k, c in enumerate(classes) if c not in src.ignore]
    paths, classes = [paths[k] for k in keep], [classes[k] for k in keep]
    if src.limit is not None:
        # A limit keeps every class: the first files of each in turn, so a smoke run still sees all of them.
        by_class: dict[str, list[int]] = {}
        for k, c in enumerate(classes):
            by_class.setdefault(c, []).append(k)
        turns = [v[r] for r in range(max((len(v) for v in by_class.values()), default=0))
                 for _, v in sorted(by_class.items()) if r < len(v)]
        order = sorted(turns[:src.limit])
        paths, classes = [paths[k] for k in order], [classes[k] for k in order]
    groups = [group_of(p.name, src.group_regex, where) for p in paths]
    splits = source_split(groups, src, where)
    records, problems = [], []
    for p, c, g, s in zip(paths, classes, groups, splits):
        if c not in src.label_map:
            problems.append(LabelProblem(src.name, p.name, "unknown_class",
                                         f"class {c!r} is not in the label map {sorted(src.label_map)} nor in ignore"))
            continue
        w, h = _image_size(p)
        labels = dict(src.label_map[c])
        records.append(FrameRecord(p, w, h, np.zeros((0, 2)), g, s, src.name, src.mpp,
                                   "mitosis" in labels, 0, labels))
    return records, problems
