"""The exception tree of histo: the library raises these; the CLI reports them."""

from __future__ import annotations


class HistoError(Exception):
    """Base class of every error histo raises on purpose."""


class SlideOpenError(HistoError):
    """A slide file cannot be opened: missing, not a slide, or corrupt."""


class SlideReadError(HistoError):
    """A region of an opened slide could not be read (the handle is closed afterwards)."""


class MppError(HistoError):
    """The slide's microns per pixel are missing or implausible and a read needs them."""


class ConfigError(HistoError):
    """A configuration file or value is invalid: unknown key, wrong type, bad value, missing file."""


class ModelError(HistoError):
    """A model file or its model card is missing, invalid, or does not fit the data."""


class NoTissueError(HistoError):
    """Raised only where a caller asks for tissue and none is present (empty masks are normally results)."""
