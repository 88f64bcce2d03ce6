"""histo.data real labelled sources: VOC / CSV / COCO frames, prefix- and folder-class images, group splits, mixing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from histo.data import InputSpec, TileDataModule, data_config_from_dict
from histo.data.frames import read_frame_source, read_image_source
from histo.data.image_tiles import tile_starts
from histo.errors import ConfigError

CLASSES = ["none", "fascicular", "haphazard"]


def tissue(w: int, h: int, seed: int = 0) -> np.ndarray:
    """Pink H&E-like texture (tissue everywhere)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    tex = 0.5 + 0.5 * np.sin(xx / 7.0 + seed) * np.cos(yy / 9.0)
    return np.stack([225 - 60 * tex, 140 - 50 * tex, 185 - 20 * tex], -1).round().astype(np.uint8)


def write_frame(path, w=200, h=160, dots=(), glass_right_px=0, seed=0):
    """A frame of tissue (optionally white glass on the right) with a black 5x5 dot at each (x, y)."""
    rgb = tissue(w, h, seed)
    if glass_right_px:
        rgb[:, w - glass_right_px:] = 245
    for x, y in dots:
        rgb[int(y) - 2:int(y) + 3, int(x) - 2:int(x) + 3] = 0
    Image.fromarray(rgb).save(path)
    return path


def voc_xml(name, w, h, boxes):
    objs = "".join(f"<object><name>{c}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
                   f"<ymax>{y1}</ymax></bndbox></object>" for c, x0, y0, x1, y1 in boxes)
    return (f"<annotation><filename>{name}</filename><size><width>{w}</width><height>{h}</height></size>"
            f"{objs}</annotation>")


@pytest.fixture
def voc(tmp_path):
    """Four frames of slides A1, A2, B1 (two frames), each with one or two 20x20 boxes."""
    img, ann = tmp_path / "images", tmp_path / "ann"
    img.mkdir()
    ann.mkdir()
    frames = {"A1_f0": [(60, 50)], "A2_f0": [(100, 80), (150, 40)], "B1_f0": [(30, 120)], "B1_f1": [(170, 140)]}
    for k, (stem, pts) in enumerate(frames.items()):
        write_frame(img / f"{stem}.png", dots=pts, seed=k)
        # the XML names a .jpg, as MITOS-ATYPIA's does: the image is found by its stem
        (ann / f"{stem}.xml").write_text(voc_xml(f"{stem}.jpg", 200, 160, [("mitosis", x - 10, y - 10, x + 10, y + 10) for x, y in pts]))
    return tmp_path, frames


def frames_cfg(root, **src):
    base = {"name": "f", "images": str(root / "images"), "annotations": str(root / "ann"), "format": "voc",
            "mpp": 0.25, "group_regex": r"^([A-Z]\d)_"}
    base.update(src)
    return data_config_from_dict({"frames": [base], "num_workers": 0, "batch_size": 4}, "<test>")


def test_voc_box_centres_are_the_figures_and_groups_come_from_the_regex(voc):
    root, frames = voc
    recs, problems = read_frame_source(frames_cfg(root), 0)
    assert problems == []
    assert [r.path.name for r in recs] == ["A1_f0.png", "A2_f0.png", "B1_f0.png", "B1_f1.png"]
    assert [r.group for r in recs] == ["A1", "A2", "B1", "B1"]
    assert sum(len(r.points) for r in recs) == 5
    np.testing.assert_allclose(recs[1].points, [[100, 80], [150, 40]])
    assert all(r.mpp == 0.25 and r.mitoses_labelled for r in recs)


def test_frames_resampled_to_any_input_spec_points_land_on_the_figure(voc):
    root, frames = voc
    # frames at 0.25 µm/px read at 0.5: 200x160 -> 100x80 px, cut into 32 px tiles (last row/col at the edge)
    dm = TileDataModule(frames_cfg(root, val_groups=["B1"]), InputSpec(tile_px=32, mpp=0.5, pattern_classes=CLASSES))
    dm.setup("fit")
    ds = dm.datasets["train"]
    assert len(ds) == 2 * len(tile_starts(100, 32, 32)) * len(tile_starts(80, 32, 32))  # A1 and A2 frames
    # edge-aligned last tiles overlap their neighbours, so a figure may sit in two tiles: 3 distinct figures
    assert len(np.unique(ds.figure_positions(), axis=0)) == 3 and ds.n_mitoses.sum() >= 3
    assert ds.mitosis_labelled.all() and (ds.necrosis == -1).all() and (ds.pattern == -1).all()
    for i in np.flatnonzero(ds.n_mitoses):
        tile = ds.read(i)
        for x, y in ds.points(i):
            assert tile[int(y), int(x)].max() < 60, "the point maps onto the dark figure"
    # unannotated tiles are labelled negatives: mitoses labelled, no point, an all-zero heatmap
    item = ds[int(np.flatnonzero(ds.n_mitoses == 0)[0])]
    assert item["mitosis_labelled"] and item["mitosis_heatmap"].sum() == 0
    assert set(dm.split_table.query("split == 'val'")["name"]) == {"B1"}


def test_frame_dataset_pickles_without_its_image_cache(voc):
    import pickle

    root, _ = voc
    dm = TileDataModule(frames_cfg(root, split="train"), InputSpec(tile_px=32, mpp=0.5))
    dm.setup("fit")
    ds = dm.datasets["train"]
    tile = ds.read(0)
    assert len(ds._cache) == 1
    copy = pickle.loads(pickle.dumps(ds))
    assert len(copy._cache) == 0 and np.array_equal(copy.read(0), tile)


def test_training_stride_overlaps_and_validation_does_not(voc):
    root, _ = voc
    dm = TileDataModule(frames_cfg(root, val_groups=["A2"], stride_px=16), InputSpec(tile_px=64, mpp=0.25))
    dm.setup("fit")
    per_frame_train = len(tile_starts(200, 64, 16)) * len(tile_starts(160, 64, 16))
    per_frame_val = len(tile_starts(200, 64, 64)) * len(tile_starts(160, 64, 64))
    assert len(dm.datasets["train"]) == 3 * per_frame_train and len(dm.datasets["val"]) == per_frame_val
    assert tile_starts(200, 64, 64) == [0, 64, 128, 136] and tile_starts(40, 64, 64) == [0]


def test_explicit_val_groups_send_the_rest_to_train_and_unknown_groups_fail(voc):
    root, _ = voc
    recs, _ = read_frame_source(frames_cfg(root, val_groups=["B1"]), 0)
    assert [r.split for r in recs] == ["train", "train", "val", "val"]
    with pytest.raises(ConfigError, match=r"val_groups: group\(s\) \['Z9'\] match no file.*A1"):
        read_frame_source(frames_cfg(root, val_groups=["Z9"]), 0)
    with pytest.raises(ConfigError, match="group_regex .* does not match the file name 'A1_f0.png'"):
        read_frame_source(frames_cfg(root, group_regex=r"^(H\d\d)_"), 0)


def test_csv_points_unknown_class_and_outside_are_problems(tmp_path):
    (tmp_path / "images").mkdir()
    for stem in ("P1_a", "P1_b", "P2_a"):
        write_frame(tmp_path / "images" / f"{stem}.png")
    csv = tmp_path / "points.csv"
    csv.write_text("image,x,y,class\nP1_a.png,20,30,mitosis\nP1_a.png,40,50,lymphocyte\nP1_b.png,,,\n"
                   "P2_a.png,500,30,mitosis\nP2_a.png,10,10,\n")
    cfg = frames_cfg(tmp_path, annotations=str(csv), format="csv", group_regex=r"^(P\d)_")
    recs, problems = read_frame_source(cfg, 0)
    assert [(r.path.name, len(r.points)) for r in recs] == [("P1_a.png", 1), ("P1_b.png", 0), ("P2_a.png", 1)]
    assert [(p.file, p.kind) for p in problems] == [("P1_a.png", "unknown_class"), ("P2_a.png", "outside")]
    assert "'lymphocyte'" in problems[0].detail and "200x160" in problems[1].detail


def test_coco_midog_bbox_and_point_with_categories(tmp_path):
    (tmp_path / "images").mkdir()
    write_frame(tmp_path / "images" / "001.tiff")
    write_frame(tmp_path / "images" / "002.tiff")
    coco = {"images": [{"id": 1, "file_name": "001.tiff"}, {"id": 2, "file_name": "002.tiff"}],
            "categories": [{"id": 1, "name": "mitotic figure"}, {"id": 2, "name": "non-mitotic figure"}],
            "annotations": [{"image_id": 1, "category_id": 1, "bbox": [40, 50, 20, 20]},
                            {"image_id": 1, "category_id": 2, "bbox": [100, 100, 20, 20]},
                            {"image_id": 2, "category_id": 1, "point": [12.5, 7.5]}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    cfg = frames_cfg(tmp_path, annotations=str(tmp_path / "coco.json"), format="coco", group_regex=r"^(\d+)")
    recs, problems = read_frame_source(cfg, 0)
    assert problems == []
    np.testing.assert_allclose(recs[0].points, [[50, 60]])  # bbox x, y, w, h -> centre
    assert recs[0].n_negative == 1
    np.testing.assert_allclose(recs[1].points, [[12.5, 7.5]])


def test_figure_on_glass_is_a_problem(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "ann").mkdir()
    write_frame(tmp_path / "images" / "G1_a.png", w=400, h=200, glass_right_px=200)
    (tmp_path / "ann" / "G1_a.xml").write_text(voc_xml("G1_a.png", 400, 200, [("mitosis", 90, 90, 110, 110),
                                                                               ("mitosis", 340, 90, 360, 110)]))
    dm = TileDataModule(frames_cfg(tmp_path, group_regex=r"^(G\d)_", split="train"), InputSpec(tile_px=32, mpp=0.5))
    dm.setup("fit")
    assert [(p.kind, p.file) for p in dm.label_problems] == [("on_glass", "G1_a.png")]
    assert "(350, 100)" in dm.label_problems[0].detail
    assert dm.datasets["train"].n_mitoses.sum() == 1  # the glass figure is left out


def write_class_images(root):
    """Prefix-named 96x96 images: 2 NEC, 2 VIA, 1 STR over cases C1..C3, plus a DEB of unknown class."""
    names = ["NEC_C1_0", "NEC_C2_0", "VIA_C1_1", "VIA_C3_0", "STR_C2_1", "DEB_C3_1"]
    for k, n in enumerate(names):
        Image.fromarray(tissue(96, 96, k)).save(root / f"{n}.jpg", quality=95)
    return names


def images_cfg(root, **src):
    base = {"name": "im", "root": str(root), "glob": "*.jpg", "mpp": 0.5, "group_regex": r"_(C\d)_",
            "label_map": {"NEC": {"necrosis": 1}, "VIA": {"necrosis": 0}, "STR": {"necrosis": 0, "pattern": "none"}}}
    base.update(src)
    return data_config_from_dict({"images": [base], "num_workers": 0, "batch_size": 4}, "<test>")


def test_prefix_classes_label_map_and_unknown_class(tmp_path):
    write_class_images(tmp_path)
    recs, problems = read_image_source(images_cfg(tmp_path), 0)
    assert [(p.file, p.kind) for p in problems] == [("DEB_C3_1.jpg", "unknown_class")]
    assert "'DEB'" in problems[0].detail
    labels = {r.path.stem: r.labels for r in recs}
    assert labels["NEC_C1_0"] == {"necrosis": 1} and labels["STR_C2_1"] == {"necrosis": 0, "pattern": "none"}
    assert not any(r.mitoses_labelled for r in recs)
    recs, problems = read_image_source(images_cfg(tmp_path, ignore=["DEB"]), 0)
    assert problems == [] and len(recs) == 5


def test_folder_classes_mitosis_zero_is_a_hard_negative(tmp_path):
    for cls in ("mitosis", "no_mitosis"):
        (tmp_path / cls).mkdir()
        for k in range(2):
            Image.fromarray(tissue(64, 64, k)).save(tmp_path / cls / f"H0{k}_{cls}_{k}.png")
    cfg = images_cfg(tmp_path, glob="*/*.png", class_from="folder", group_regex=r"^(H\d\d)_",
                     label_map={"no_mitosis": {"mitosis": 0}}, ignore=["mitosis"], split="train")
    dm = TileDataModule(cfg, InputSpec(tile_px=64, mpp=0.5))
    dm.setup("fit")
    ds = dm.datasets["train"]
    assert len(ds) == 2 and ds.mitosis_labelled.all() and ds.n_mitoses.sum() == 0 and (ds.necrosis == -1).all()
    with pytest.raises(ConfigError, match="mitosis must be 0"):
        images_cfg(tmp_path, label_map={"mitosis": {"mitosis": 1}})


def test_large_images_are_cut_into_model_tiles_with_their_class_label(tmp_path):
    write_class_images(tmp_path)
    # 96 px at 0.5 µm/px read at 0.25: 192 px, cut into 64 px tiles -> 9 per image
    dm = TileDataModule(images_cfg(tmp_path, ignore=["DEB"], split="train"), InputSpec(tile_px=64, mpp=0.25, pattern_classes=CLASSES))
    dm.setup("fit")
    ds = dm.datasets["train"]
    assert len(ds) == 5 * 9
    assert (ds.necrosis == 1).sum() == 18 and (ds.necrosis == 0).sum() == 27 and (ds.pattern == 0).sum() == 9
    assert ds.read(0).shape == (64, 64, 3)


def test_pattern_label_must_be_a_model_class(tmp_path):
    write_class_images(tmp_path)
    cfg = images_cfg(tmp_path, ignore=["DEB"], label_map={"NEC": {"necrosis": 1}, "VIA": {"pattern": "tumour"},
                                                         "STR": {"necrosis": 0}})
    with pytest.raises(ConfigError, match="pattern 'tumour' is not one of the model classes"):
        TileDataModule(cfg, InputSpec(tile_px=64, mpp=0.5, pattern_classes=CLASSES)).setup("fit")


def test_group_split_never_straddles_across_sources(tmp_path, voc):
    root, _ = voc
    imgs = tmp_path / "cls"
    imgs.mkdir()
    for k, g in enumerate(["A1", "A2", "B1", "A1", "B1"]):
        Image.fromarray(tissue(64, 64, k)).save(imgs / f"NEC_{g}_{k}.jpg")
    raw = {"frames": [{"name": "f", "images": str(root / "images"), "annotations": str(root / "ann"), "format": "voc",
                       "mpp": 0.25, "group_regex": r"^([A-Z]\d)_"}],
           "images": [{"name": "im", "root": str(imgs), "glob": "*.jpg", "mpp": 0.25, "group_regex": r"_([A-Z]\d)_",
                       "label_map": {"NEC": {"necrosis": 1}}}],
           "split": {"val_fraction": 0.34, "seed": 3}, "num_workers": 0}
    for seed in range(4):
        raw["split"]["seed"] = seed
        dm = TileDataModule(data_config_from_dict(raw, "<t>"), InputSpec(tile_px=64, mpp=0.25))
        dm.setup("fit")
        splits_of = dm.split_table.groupby("name")["split"].nunique()
        assert (splits_of == 1).all(), dm.split_table
        # the same group name in both sources is one slide: its frames and crops share the split
        by = {}
        for split, _, ds in dm.parts:
            for g in ds.group_names():
                by.setdefault(g, set()).add(split)
        assert all(len(v) == 1 for v in by.values()) and "val" in {s for v in by.values() for s in v}


def test_mixed_sources_batch_contract_and_masks(tmp_path, voc):
    root, _ = voc
    imgs = tmp_path / "cls"
    imgs.mkdir()
    write_class_images(imgs)
    raw = {"frames": [{"name": "f", "images": str(root / "images"), "annotations": str(root / "ann"), "format": "voc",
                       "mpp": 0.25, "group_regex": r"^([A-Z]\d)_", "split": "train"}],
           "images": [{"name": "im", "root": str(imgs), "glob": "*.jpg", "mpp": 0.5, "group_regex": r"_(C\d)_",
                       "ignore": ["DEB"], "split": "train",
                       "label_map": {"NEC": {"necrosis": 1}, "VIA": {"necrosis": 0}, "STR": {"necrosis": 0, "pattern": "none"}}}],
           "num_workers": 0, "batch_size": 64}
    dm = TileDataModule(data_config_from_dict(raw, "<t>"), InputSpec(tile_px=32, mpp=0.5, pattern_classes=CLASSES))
    dm.setup("fit")
    batch = next(iter(dm._loader(dm.datasets["train"], shuffle=False)))
    n = len(batch["image"])
    assert batch["image"].shape == (n, 3, 32, 32) and batch["mitosis_heatmap"].shape == (n, 1, 8, 8)
    frame = torch.tensor([s in ("A1", "A2", "B1") for s in batch["slide"]])
    assert frame.any() and (~frame).any()
    assert batch["mitosis_labelled"][frame].all() and (batch["necrosis"][frame] == -1).all()
    assert not batch["mitosis_labelled"][~frame].any() and (batch["necrosis"][~frame] >= 0).all()
    assert (batch["pattern"][frame] == -1).all()


def test_config_sections_are_validated():
    base = {"name": "x", "images": "i", "annotations": "a", "format": "voc", "mpp": 0.25, "group_regex": "^(.)"}
    with pytest.raises(ConfigError, match=r"unknown key 'data.frames\[0\].val_group'"):
        data_config_from_dict({"frames": [{**base, "val_group": ["A"]}]})
    with pytest.raises(ConfigError, match=r"data.frames\[0\].format' must be one of"):
        data_config_from_dict({"frames": [{**base, "format": "yolo"}]})
    with pytest.raises(ConfigError, match="in both val_groups and test_groups"):
        data_config_from_dict({"frames": [{**base, "val_groups": ["A"], "test_groups": ["A"]}]})
    im = {"name": "y", "root": "r", "mpp": 0.5, "group_regex": "^(.)", "label_map": {"A": {"necrotic": 1}}}
    with pytest.raises(ConfigError, match="label_map.A: unknown head 'necrotic'"):
        data_config_from_dict({"images": [im]})
    with pytest.raises(ConfigError, match="used twice"):
        data_config_from_dict({"frames": [base], "images": [{**im, "name": "x", "label_map": {}}]})


@pytest.mark.real_data
def test_real_mitos_voc_and_osteosarcoma_sources(real_data):
    mitos = real_data / "mitosis" / "mitos_atypia14_hamamatsu"
    osteo = real_data / "necrosis" / "osteosarcoma_tcia"
    raw = {"frames": [{"name": "mitos", "images": str(mitos / "images"), "annotations": str(mitos / "annotations"),
                       "format": "voc", "mpp": 0.227, "group_regex": r"^(H\d\d)_", "val_groups": ["H10", "H14"]}],
           "images": [{"name": "osteo", "root": str(osteo), "glob": "*.jpg", "mpp": 1.0, "prefix_regex": "^(.+?)___",
                       "group_regex": r"Case-4-(C\d+)-", "limit": 6,
                       "label_map": {"Non-Viable-Tumor": {"necrosis": 1}, "Viable": {"necrosis": 0},
                                     "Non-Tumor": {"necrosis": 0, "pattern": "none"}}}]}
    cfg = data_config_from_dict(raw, "<real>")
    recs, problems = read_frame_source(cfg, 0)
    assert problems == [] and len(recs) == 327 and sum(len(r.points) for r in recs) == 663
    assert sorted({r.group for r in recs}) == ["H03", "H04", "H05", "H07", "H10", "H11", "H12", "H14"]
    assert {r.group for r in recs if r.split == "val"} == {"H10", "H14"}
    assert (recs[0].width, recs[0].height) == (1663, 1485)
    imgs, problems = read_image_source(cfg, 0)
    assert problems == [] and len(imgs) == 6
    assert sorted(r.labels.get("necrosis") for r in imgs) == [0, 0, 0, 0, 1, 1]  # 2 of each class kept by the limit
    # a few frames through the DataModule at 0.25 µm/px: every figure of the kept frames lands in a tile
    raw["frames"][0].update(limit=12, val_groups=[], split="train")
    raw["images"][0].update(limit=3, split="val")
    dm = TileDataModule(data_config_from_dict(raw, "<real>"), InputSpec(tile_px=256, mpp=1.0))
    dm.setup("fit")
    counts = dm.label_counts.set_index(["split", "source", "head", "label"])
    assert counts.loc[("train", "mitos", "mitosis", "positive"), "n_figures"] == sum(len(r.points) for r in recs[:12])
    assert counts.loc[("val", "osteo", "necrosis", "positive"), "n_tiles"] == 16  # 1024 px at 1 µm/px: 4x4 tiles
    assert dm.label_problems == []
