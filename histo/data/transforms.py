"""Augmentation pipelines from config: albumentations transforms by name, plus histo's HEDJitter stain augmentation."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from typing import Any

import albumentations as A
import numpy as np
from skimage.color import hed_from_rgb, rgb_from_hed

from histo.errors import ConfigError


class HEDJitter(A.ImageOnlyTransform):
    """Stain augmentation in haematoxylin-eosin-DAB optical density (Tellez et al. 2018).

    Each stain channel's concentration c becomes c * alpha + beta with alpha ~ U(1 - sigma, 1 + sigma)
    and beta ~ U(-bias, bias), drawn per image and channel (Ruifrok & Johnston colour deconvolution).
    """

    def __init__(self, sigma: float = 0.05, bias: float = 0.05, p: float = 0.5):
        super().__init__(p=p)
        if not 0.0 <= sigma < 1.0:
            raise ValueError(f"sigma must be in [0, 1), got {sigma}")
        if not bias >= 0.0:
            raise ValueError(f"bias must be >= 0, got {bias}")
        self.sigma, self.bias = float(sigma), float(bias)

    def get_params(self) -> dict[str, Any]:
        """Draw the per-stain scale and shift for one image."""
        rng = self.random_generator
        return {"alpha": rng.uniform(1 - self.sigma, 1 + self.sigma, 3), "beta": rng.uniform(-self.bias, self.bias, 3)}

    def apply(self, img: np.ndarray, alpha: np.ndarray | None = None, beta: np.ndarray | None = None, **params: Any) -> np.ndarray:
        """Jitter one H×W×3 uint8 image."""
        return hed_jitter(img, np.ones(3) if alpha is None else alpha, np.zeros(3) if beta is None else beta)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """Names albumentations uses to serialise the transform."""
        return ("sigma", "bias")


def hed_jitter(img: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Scale and shift the H, E, DAB concentrations of an RGB uint8 image (exact identity for alpha=1, beta=0)."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"HEDJitter expects an H×W×3 uint8 RGB image, got {img.shape} {img.dtype}")
    od = -np.log10((img.astype(np.float64) + 1.0) / 256.0)  # in (0, 2.41]; +1 keeps black finite
    conc = od @ hed_from_rgb
    conc = conc * np.asarray(alpha, np.float64) + np.asarray(beta, np.float64)
    out = 256.0 * np.power(10.0, -(conc @ rgb_from_hed)) - 1.0
    return np.clip(out, 0, 255).round().astype(np.uint8)


_HISTO_TRANSFORMS: dict[str, type] = {"HEDJitter": HEDJitter}


def register_transform(name: str, cls: type) -> None:
    """Make an albumentations-compatible transform class available to configs under `name`."""
    _HISTO_TRANSFORMS[name] = cls


def build_transform(spec: dict[str, Any], key: str = "augment[0]") -> A.BasicTransform:
    """One transform from `{name: ..., **kwargs}`; ConfigError names the key and transform when it cannot be made."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ConfigError(f"'{key}' must be a mapping with a 'name' (e.g. {{name: HorizontalFlip, p: 0.5}}), got {spec!r}")
    name = spec["name"]
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    cls = _HISTO_TRANSFORMS.get(name) or getattr(A, name, None)
    if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
        raise ConfigError(f"'{key}': unknown transform {name!r} (an albumentations transform name or one of {sorted(_HISTO_TRANSFORMS)})")
    params = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        bad = sorted(set(kwargs) - set(params))
        if bad:
            raise ConfigError(f"'{key}': transform {name!r} has no argument {bad[0]!r} (it takes {', '.join(n for n in params if n != 'self')})")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            transform = cls(**kwargs)
        # albumentations only warns about arguments it does not know; in a config that is a typo.
        for w in caught:
            if "not valid" in str(w.message):
                raise ValueError(str(w.message))
        return transform
    except Exception as exc:  # TypeError for unknown kwargs, pydantic ValidationError/ValueError for bad values
        msg = str(exc).strip().splitlines()
        raise ConfigError(f"'{key}': transform {name!r} rejects its arguments {kwargs}: {' '.join(m.strip() for m in msg[:3])}") from exc


def build_pipeline(specs: Sequence[dict[str, Any]], key: str = "augment") -> A.Compose | None:
    """An albumentations Compose from config entries, moving keypoints ('xy') with geometric transforms; None when empty."""
    if not specs:
        return None
    transforms = [build_transform(s, f"{key}[{i}]") for i, s in enumerate(specs)]
    return A.Compose(transforms, keypoint_params=A.KeypointParams(format="xy", remove_invisible=True))
