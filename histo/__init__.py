"""histo: histopathology slide tiling, tile models, grading and IHC quantification (research use only)."""

__version__ = "0.1.0"
