"""Portable copies of a bundle's LightGBM model (``task=export``): ONNX, lleaves, treelite.

Each format has one module that imports its optional library in one guarded place
(:mod:`aml_pipeline.export.runtimes`); the files go into the bundle folder, hashed in its
manifest, after a parity check against the native model.
"""
