"""histo train's data checks: label counts saved, label problems refused, heads without positives, no val split."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from histo.cli import main
from histo.data import InputSpec, TileDataModule, data_config_from_dict
from histo.errors import ConfigError
from histo.train.checks import check_datamodule
from tests.test_data_real_sources import tissue, voc_xml, write_frame

HEADS = ["necrosis", "mitosis"]


def frames_and_images(tmp_path, val_figures=True, necrosis_val=True, extra_xml=""):
    """Frames of slides S1 (train) and S2 (val) plus necrosis images of cases C1 (train) and C2 (val)."""
    img, ann, cls = tmp_path / "images", tmp_path / "ann", tmp_path / "cls"
    for d in (img, ann, cls):
        d.mkdir(exist_ok=True)
    frames = {"S1_a": [(60, 50)], "S1_b": [(120, 90)], "S2_a": [(100, 80)] if val_figures else []}
    for k, (stem, pts) in enumerate(frames.items()):
        write_frame(img / f"{stem}.png", dots=pts, seed=k)
        boxes = [("mitosis", x - 10, y - 10, x + 10, y + 10) for x, y in pts]
        (ann / f"{stem}.xml").write_text(voc_xml(f"{stem}.png", 200, 160, boxes))
    if extra_xml:
        (ann / "S1_a.xml").write_text(extra_xml)
    names = ["NEC_C1_0", "VIA_C1_0", "VIA_C2_0"] + (["NEC_C2_0"] if necrosis_val else [])
    for k, n in enumerate(names):
        Image.fromarray(tissue(64, 64, k)).save(cls / f"{n}.png")
    return {"frames": [{"name": "frames", "images": str(img), "annotations": str(ann), "format": "voc", "mpp": 0.5,
                        "group_regex": r"^(S\d)_", "val_groups": ["S2"]}],
            "images": [{"name": "nec", "root": str(cls), "glob": "*.png", "mpp": 0.5, "group_regex": r"_(C\d)_",
                        "val_groups": ["C2"], "label_map": {"NEC": {"necrosis": 1}, "VIA": {"necrosis": 0}}}],
            "num_workers": 0, "batch_size": 4}


def dm_of(raw):
    return TileDataModule(data_config_from_dict(raw, "<test>"), InputSpec(tile_px=32, mpp=0.5))


def test_counts_are_printed_and_saved_per_split_head_and_label(tmp_path):
    lines = []
    counts = check_datamodule(dm_of(frames_and_images(tmp_path)), HEADS, tmp_path / "run", echo=lines.append)
    saved = pd.read_csv(tmp_path / "run" / "label_counts.csv")
    assert list(saved.columns) == ["split", "source", "head", "label", "n_tiles", "n_figures"]
    assert set(saved["head"]) == {"necrosis", "mitosis"}  # the model has no pattern head: no pattern rows
    rows = json.loads((tmp_path / "run" / "label_counts.json").read_text())
    assert len(rows) == len(saved) == len(counts)
    c = saved.set_index(["split", "source", "head", "label"])
    assert c.loc[("train", "frames", "mitosis", "positive"), "n_figures"] == 2
    assert c.loc[("val", "frames", "mitosis", "positive"), "n_figures"] == 1
    assert c.loc[("train", "nec", "necrosis", "positive"), "n_tiles"] == 4  # a 64 px image = 4 tiles of 32 px
    assert c.loc[("val", "nec", "necrosis", "negative"), "n_tiles"] == 4
    assert "label counts per split, head and label" in lines[0] and "label_counts.csv" in lines[0]
    assert (tmp_path / "run" / "label_problems.txt").read_text() == ""


def test_head_without_positive_in_val_is_an_error_naming_head_and_split(tmp_path):
    raw = frames_and_images(tmp_path, val_figures=False, necrosis_val=False)
    with pytest.raises(ConfigError) as err:
        check_datamodule(dm_of(raw), HEADS, None, echo=lambda s: None)
    msg = str(err.value)
    assert "head 'mitosis' has no positive label in val" in msg
    assert "head 'necrosis' has no positive label in val (4 negative tiles)" in msg
    assert " in train" not in msg


def test_unknown_class_outside_and_glass_are_listed_unless_allowed(tmp_path):
    rgb_path = tmp_path / "images"
    bad = voc_xml("S1_a.png", 200, 160, [("mitosis", 50, 40, 70, 60), ("lymphocyte", 10, 10, 30, 30),
                                         ("mitosis", 400, 10, 420, 30)])
    raw = frames_and_images(tmp_path, extra_xml=bad)
    write_frame(rgb_path / "S1_b.png", dots=[(120, 90)], glass_right_px=200)  # S1_b's figure now lies on glass
    with pytest.raises(ConfigError) as err:
        check_datamodule(dm_of(raw), HEADS, tmp_path / "run", echo=lambda s: None)
    msg = str(err.value)
    assert "3 annotation(s) cannot be used (unknown_class: 1, outside: 1, on_glass: 1)" in msg
    assert "S1_a.png: unknown_class: class 'lymphocyte'" in msg and "S1_a.png: outside" in msg
    assert "S1_b.png: on_glass: figure at (120, 90)" in msg and "data.allow_label_problems: true" in msg
    assert len((tmp_path / "run" / "label_problems.txt").read_text().splitlines()) == 3


def test_allowed_problems_train_on_the_rest(tmp_path):
    bad = voc_xml("S1_a.png", 200, 160, [("mitosis", 50, 40, 70, 60), ("lymphocyte", 10, 10, 30, 30)])
    raw = {**frames_and_images(tmp_path, extra_xml=bad), "allow_label_problems": True}
    lines = []
    counts = check_datamodule(dm_of(raw), HEADS, None, echo=lines.append)
    assert counts.query("split == 'train' and head == 'mitosis' and label == 'positive'")["n_figures"].sum() == 2
    assert "lymphocyte" in lines[1] and "left out" in lines[1]


def geojson(features):
    def feat(cls, geom):
        return {"type": "Feature", "geometry": geom, "properties": {"classification": {"name": cls}}}
    return {"type": "FeatureCollection", "features": [feat(c, g) for c, g in features]}


def box(x0, y0, x1, y1):
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def test_slide_annotations_unknown_outside_and_on_glass(tmp_path, test_slide_path):
    # conftest's slide: 2048x1536 px at 0.25 µm/px, tissue in (512, 256)-(1536, 1280), glass elsewhere
    ann = tmp_path / "slide.geojson"
    ann.write_text(json.dumps(geojson([
        ("Stroma", box(600, 300, 1400, 1200)),
        ("Necrosis", box(20, 20, 400, 200)),  # on glass
        ("Mitosis", {"type": "Point", "coordinates": [800, 700]}),
        ("Mitosis", {"type": "Point", "coordinates": [1900, 1400]}),  # on glass
        ("Mitosis", {"type": "Point", "coordinates": [3000, 100]}),  # outside
        ("Lymphocyte", {"type": "Point", "coordinates": [900, 700]}),  # unknown class
        ("Pen", box(1700, 100, 2000, 300)),  # ignore class over glass: fine
    ])))
    raw = {"slides": [{"path": str(test_slide_path), "annotations": str(ann), "split": "train"}], "num_workers": 0}
    dm = TileDataModule(data_config_from_dict(raw, "<t>"), InputSpec(tile_px=64, mpp=1.0))
    dm.setup("fit")
    got = sorted((p.kind, p.detail.split(":")[0]) for p in dm.label_problems)
    assert got == [("on_glass", "feature 1 ('Necrosis')"), ("on_glass", "feature 3 ('Mitosis') at (1900, 1400) has no tissue under it"),
                   ("outside", "feature 4 ('Mitosis') at (3000, 100) lies outside the 2048x1536 px slide"),
                   ("unknown_class", "feature 5 ('Lymphocyte')")]
    assert all(p.source == "data.slides[0]" and p.file == "slide.geojson" for p in dm.label_problems)


def train_yaml(tmp_path, data):
    cfg = {"model": {"backbone": "tiny", "tile_px": 64, "mpp": 1.0, "heads": {"pattern": {}, "necrosis": {}, "mitosis": {"stride_px": 4, "width": 16}}},
           "data": data, "trainer": {"max_epochs": 1, "progress_bar": False}, "early_stop": {"patience": 0},
           "output": {"dir": str(tmp_path / "runs"), "name": "bad"}}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_one_annotated_slide_with_no_val_split_stops_histo_train_with_a_clear_message(tmp_path, test_slide_path, capsys):
    ann = tmp_path / "slide.geojson"
    ann.write_text(json.dumps(geojson([("Stroma", box(512, 256, 1024, 1280)), ("Tumor-fascicular", box(1024, 256, 1536, 768)),
                                       ("Tumor-haphazard", box(1024, 768, 1536, 1280)), ("Necrosis", box(1100, 300, 1400, 600)),
                                       ("Mitosis", {"type": "Point", "coordinates": [800, 700]})])))
    path = train_yaml(tmp_path, {"slides": [{"path": str(test_slide_path), "annotations": str(ann)}], "num_workers": 0})
    assert main(["train", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "training data checks failed, training not started" in err
    assert "no validation split: every annotated slide/group (test_slide) went to train" in err
    assert "Traceback" not in err and "label counts per split, head and label" in err
    run = tmp_path / "runs" / "bad" / "version_0"
    assert (run / "label_counts.csv").is_file() and not (run / "checkpoints").exists()
    saved = pd.read_csv(run / "label_counts.csv")
    assert set(saved["split"]) == {"train"}
    assert saved.query("head == 'mitosis' and label == 'positive'")["n_figures"].sum() == 1
    assert np.isin(["none", "fascicular", "haphazard"], saved.query("head == 'pattern' and n_tiles > 0")["label"]).all()
