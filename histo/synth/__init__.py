"""Synthetic slides: a streaming pyramidal TIFF writer and histology phantoms with exact ground truth.

Import the submodules explicitly (``histo.synth.tiff_writer``, ``histo.synth.phantom`` ...).
"""
