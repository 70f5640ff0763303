"""Add a parity-checked export to a bundle folder and record it in the bundle's manifest.

Why in the bundle: the bundle is the unit of deployment, so an export travels (and is
registered) with the model, features and thresholds it belongs to, and loads only when its
SHA-256 matches the manifest. Adding a file changes the manifest and so the bundle hash:
export a bundle before ``task=evaluate`` registers it (``task=train``, ``task=export``,
``task=evaluate``), or serve the folder itself.

Parity: the export's scores on the bundle's validation window must equal the native
model's within ``export.tolerance`` (1e-6), or nothing is written and the task fails with
one line giving the largest difference.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from aml_pipeline.bundle import MANIFEST, ModelBundle, sha256_file
from aml_pipeline.export.base import ExportError, max_abs_error
from aml_pipeline.export.runtimes import FORMATS, ExportedModel, scorer, write


def _versions(fmt: str) -> dict[str, str]:
    out = {}
    for pkg in (*FORMATS[fmt][1], "lightgbm"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def export_bundle(directory: Path, fmt: str, X_valid: np.ndarray, tolerance: float) -> dict[str, Any]:
    """Write ``fmt`` into the bundle folder if it reproduces the native scores; the manifest entry."""
    bundle = ModelBundle.load(directory)
    manifest = json.loads((directory / MANIFEST).read_text())
    meta = manifest["model"]
    if meta.get("library") != "lightgbm":
        raise ExportError(f"export.format={fmt}: the bundle's model is {meta.get('class', meta.get('library'))}; "
                          f"only LightGBM models are exported")
    if X_valid.shape[0] == 0:
        raise ExportError("export: the validation window has no rows to check parity on")
    model_txt = directory / meta["file"]
    booster = lgb.Booster(model_file=str(model_txt))
    native = bundle.model.predict_proba(X_valid)
    with tempfile.TemporaryDirectory(prefix="aml_export_") as tmp:
        path = write(fmt, model_txt, booster, X_valid.shape[1], Path(tmp))
        error = max_abs_error(native, scorer(fmt, path, model_txt).predict(X_valid))
        if not error <= tolerance:
            raise ExportError(f"export.format={fmt}: max |export - native| = {error:.3g} on {X_valid.shape[0]:,} "
                              f"validation rows > export.tolerance {tolerance:g}; nothing written")
        target = directory / path.name
        shutil.copyfile(path, target)
    entry = {"file": target.name, "sha256": sha256_file(target), "max_abs_error": error, "rows": int(X_valid.shape[0]),
             "tolerance": tolerance, "versions": _versions(fmt),
             "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    manifest["files"][target.name] = entry["sha256"]
    manifest.setdefault("exports", {})[fmt] = entry
    text = json.dumps(manifest, indent=1, sort_keys=True, default=str) + "\n"
    (directory / MANIFEST).write_text(text)
    return {**entry, "format": fmt, "bundle_hash": hashlib.sha256(text.encode()).hexdigest()}


def exported_model(bundle: ModelBundle, runtime: str):
    """The bundle's classifier scoring through its ``runtime`` export (``native``: itself)."""
    if runtime == "native":
        return bundle.model
    entry = bundle.exports.get(runtime)
    if not entry or bundle.directory is None:
        have = ", ".join(sorted(bundle.exports)) or "none"
        raise ExportError(f"deploy.model_runtime={runtime}: the bundle has no {runtime} export (it has: {have}); "
                          f"make one with task=export export.format={runtime} bundle=<folder>")
    model_txt = bundle.directory / "model.txt"
    return ExportedModel(bundle.model, scorer(runtime, bundle.directory / entry["file"], model_txt))
