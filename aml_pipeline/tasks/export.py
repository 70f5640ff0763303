"""``task=export``: write the bundle's LightGBM model as ONNX, lleaves or treelite.

``python -m aml_pipeline task=export export.format=onnx [bundle=models/bundle]``: the
export goes into the bundle folder, hashed in its manifest, after a parity check on the
bundle's validation window (``data/features/features.parquet``, split ``valid``): its
scores must equal the native model's within ``export.tolerance`` (1e-6) or the task fails
with one line. The formats' libraries are the ``[export]`` extra. docs/lifecycle.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import polars as pl
from omegaconf import DictConfig

from aml_pipeline.bundle import MANIFEST, ModelBundle, feature_matrix
from aml_pipeline.config import option_value
from aml_pipeline.errors import UserError
from aml_pipeline.export.bundle_export import export_bundle
from aml_pipeline.export.runtimes import require
from aml_pipeline.progress import status, table
from aml_pipeline.layout import Layout, need


def run(cfg: DictConfig) -> dict:
    fmt = str(option_value(cfg.export.format))
    tolerance = float(cfg.export.tolerance)
    if not tolerance >= 0:
        raise UserError(f"export.tolerance={cfg.export.tolerance}: must be >= 0")
    require(fmt)
    layout = Layout.of(cfg)
    directory = Path(cfg.bundle) if cfg.bundle else layout.bundle
    if "://" in str(cfg.bundle or "") or ":/" in str(cfg.bundle or ""):
        raise UserError(f"bundle={cfg.bundle}: task=export writes into a bundle folder (e.g. models/bundle), "
                        f"not a registered version; export before task=evaluate registers it")
    if not (directory / MANIFEST).is_file():
        raise UserError(f"bundle={directory}: not a bundle folder (no {MANIFEST}); run task=train first")
    start = time.perf_counter()
    ModelBundle.load(directory)  # verified before anything is read from it
    # the columns the model was trained on, as recorded (the model's input, whatever the plan code says now)
    columns = json.loads((directory / MANIFEST).read_text())["feature_columns"]
    valid = pl.scan_parquet(need(layout.features, "features")).filter(pl.col("split") == "valid")
    missing = [c for c in columns if c not in valid.collect_schema().names()]
    if missing:
        raise UserError(f"{layout.features} lacks the bundle's feature column(s) {missing[:3]}: it belongs to "
                        f"another plan; run task=features with the bundle's config")
    X = feature_matrix(valid.select(columns).collect(), columns)
    with status(f"export: {fmt}, parity on {X.shape[0]:,} validation rows"):
        info = export_bundle(directory, fmt, X, tolerance)
    table("export", [
        ("format", fmt),
        ("file", f"{directory / info['file']} (sha256 {info['sha256'][:12]})"),
        ("parity", f"max |export - native| {info['max_abs_error']:.2g} on {info['rows']:,} validation rows "
                   f"(tolerance {tolerance:g})"),
        ("bundle", f"{directory} (new sha256 {info['bundle_hash'][:12]})"),
        ("took", f"{time.perf_counter() - start:.1f}s"),
    ])
    return info
