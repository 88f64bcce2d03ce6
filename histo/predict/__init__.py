"""Slide inference: tiles read on the fly → model → tile probabilities and mitosis points (the prediction folder of docs/formats.md)."""

from histo.predict.dataset import TileBatchDataset, make_loader, plan_batches
from histo.predict.distributed import RankInfo, rank_info, shard
from histo.predict.engine import (
    CANDIDATE_FLOOR,
    InferenceOutput,
    amp_dtype,
    candidate_threshold,
    resolve_device,
    run_inference,
)
from histo.predict.image import ImagePrediction, predict_image
from histo.predict.outputs import (
    MITOSES_FILE,
    PREDICTION_FILE,
    SCHEMA,
    TILES_FILE,
    card_summary,
    dedup_points,
    load_prediction,
    read_done,
    tiles_metadata,
    weights_sha256,
)
from histo.predict.run import STATUS_FIELDS, PredictResult, predict_slide, predict_tiling
from histo.predict.scales import ScalePrediction, plan_scales, predict_scales, scale_tiling
from histo.predict.status import merge_status, read_status, write_status

__all__ = [
    "CANDIDATE_FLOOR", "ImagePrediction", "ScalePrediction", "candidate_threshold", "plan_scales", "predict_image",
    "predict_scales", "scale_tiling",
    "InferenceOutput", "MITOSES_FILE", "PREDICTION_FILE", "PredictResult", "RankInfo", "SCHEMA", "STATUS_FIELDS",
    "TILES_FILE", "TileBatchDataset", "amp_dtype", "card_summary", "dedup_points", "load_prediction",
    "make_loader", "merge_status", "plan_batches", "predict_slide", "predict_tiling", "rank_info", "read_done",
    "read_status", "resolve_device", "run_inference", "shard", "tiles_metadata", "weights_sha256",
    "write_status",
]
