"""The case file: one H&E slide and its IHC slides by marker (YAML, paths relative to the file)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histo.config import from_dict, load_yaml
from histo.errors import ConfigError


@dataclass(frozen=True)
class CaseFile:
    """A case as written in its YAML file: one H&E slide and its IHC slides by marker."""

    case_id: str
    he: str
    ihc: dict[str, str] = field(default_factory=dict)
    mpp: float | None = None  # level-0 µm/px for every slide of the case whose file lacks it


@dataclass(frozen=True)
class Case:
    """A checked case: its file, the resolved slide paths (existing) and where it was read from."""

    spec: CaseFile
    he_path: Path
    ihc_paths: dict[str, Path]
    source: Path

    @property
    def case_id(self) -> str:
        """The case's name (its output folder)."""
        return self.spec.case_id

    @property
    def mpp(self) -> float | None:
        """The level-0 µm/px override of the case's slides (None: each slide's own)."""
        return self.spec.mpp


def load_case(path: str | os.PathLike[str]) -> Case:
    """Read and check a case file: plain case_id, existing slide files (relative paths from the file's folder)."""
    p = Path(path)
    spec = from_dict(CaseFile, load_yaml(p), source=str(p))
    if not spec.case_id.strip() or any(c in spec.case_id for c in "/\\:") or spec.case_id in (".", ".."):
        raise ConfigError(f"{p}: case_id {spec.case_id!r} must be a plain name (it names the output folder)")
    base = p.parent

    def _file(rel: Any, key: str) -> Path:
        if not isinstance(rel, str) or not rel:
            raise ConfigError(f"{p}: '{key}' must be a slide path, got {rel!r}")
        f = (base / rel).resolve() if not Path(rel).is_absolute() else Path(rel)
        if not f.is_file():
            raise ConfigError(f"{p}: {key}: slide file not found: {f}")
        return f

    he = _file(spec.he, "he")
    ihc = {marker: _file(rel, f"ihc.{marker}") for marker, rel in spec.ihc.items()}
    return Case(spec, he, ihc, p)
