"""The export formats: how each is written from a LightGBM model and how it scores.

Each format's library is optional (``pip install 'aml_pipeline[export]'``) and imported only here,
when that format is asked for; a missing one is a one-line error naming what to install.

| format | file in the bundle | runtime | parity with LightGBM (quickstart bundle, 40k rows) |
|---|---|---|---|
| onnx | ``model.onnx`` | ONNX Runtime, ``ai.onnx.ml.TreeEnsemble`` in float64 | ~2e-16 |
| lleaves | ``model.lleaves.so`` | the trees compiled to machine code by LLVM (lleaves) | ~6e-16 |
| treelite | ``model.treelite`` | treelite's own predictor (GTIL) on its checkpoint | 0 |

lleaves and treelite files are native or binary code parsed by their library: they are
loaded only after the bundle's manifest has verified their SHA-256 (``ModelBundle.load``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np

from aml_pipeline.export.base import ExportError
from aml_pipeline.export.onnx import OnnxScorer, convert
from aml_pipeline.optional import install_hint

INSTALL = install_hint("export")

#: format -> (file written into the bundle, modules it needs, pip packages that bring them)
FORMATS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "onnx": ("model.onnx", ("onnx", "onnxruntime"), "onnx onnxruntime"),
    "lleaves": ("model.lleaves.so", ("lleaves", "llvmlite"), "lleaves 'llvmlite<0.45'"),
    "treelite": ("model.treelite", ("treelite",), "treelite"),
}


def require(fmt: str) -> ModuleType:
    """Import the format's libraries, or one line naming what to install; the format's own
    library (the one place lleaves and treelite are imported; onnx's is :mod:`.onnx`)."""
    if fmt not in FORMATS:
        raise ExportError(f"export.format={fmt!r}; allowed: {', '.join(FORMATS)}")
    modules = []
    for module in FORMATS[fmt][1]:
        try:
            modules.append(importlib.import_module(module))
        except ImportError:
            raise ExportError(f"export.format={fmt} needs the Python package {module!r}: {INSTALL} "
                              f"(or pip install {FORMATS[fmt][2]})") from None
    return modules[0]


def write(fmt: str, model_txt: Path, booster: Any, n_features: int, directory: Path) -> Path:
    """Write the export of ``booster`` (whose text model is ``model_txt``) into ``directory``."""
    library = require(fmt)  # lleaves or treelite below (onnx's libraries are used in .onnx)
    path = directory / FORMATS[fmt][0]
    if fmt == "onnx":
        path.write_bytes(convert(booster, n_features).SerializeToString())
    elif fmt == "lleaves":
        path.unlink(missing_ok=True)
        try:
            library.Model(model_file=str(model_txt)).compile(cache=str(path))
        except AttributeError as exc:  # llvmlite >= 0.45 dropped the pass-manager API lleaves 1.3 uses
            raise ExportError(f"export.format=lleaves: lleaves cannot compile with this llvmlite ({exc}); "
                              f"pip install 'llvmlite<0.45'") from None
    elif fmt == "treelite":
        library.frontend.load_lightgbm_model(str(model_txt)).serialize(str(path))
    return path


def scorer(fmt: str, path: Path, model_txt: Path) -> "ExportScorer":
    """A scorer over an export file that the bundle's manifest has already verified."""
    library = require(fmt)  # lleaves or treelite below (onnx's libraries are used in .onnx)
    if fmt == "onnx":
        s = OnnxScorer(str(path))
        return ExportScorer(fmt, s.predict, s.predict_one)
    if fmt == "lleaves":
        model = library.Model(model_file=str(model_txt))
        model.compile(cache=str(path))  # the cache exists: loaded, not compiled again

        def predict(X: np.ndarray) -> np.ndarray:
            return model.predict(np.ascontiguousarray(X, dtype=np.float64), n_jobs=1)

        return ExportScorer(fmt, predict, lambda x: float(predict(x.reshape(1, -1))[0]))
    tm = library.Model.deserialize(str(path))

    def gtil(X: np.ndarray) -> np.ndarray:
        return library.gtil.predict(tm, np.ascontiguousarray(X, dtype=np.float64), nthread=1).reshape(-1)

    return ExportScorer(fmt, gtil, lambda x: float(gtil(x.reshape(1, -1))[0]))


class ExportScorer:
    """``predict(X)`` and ``predict_one(x)`` of an export, like the native classifier's."""

    def __init__(self, fmt: str, predict: Callable[[np.ndarray], np.ndarray], predict_one: Callable[[np.ndarray], float]):
        self.format = fmt
        self.predict = predict
        self.predict_one = predict_one


class ExportedModel:
    """The bundle's classifier with its scores computed by an export (explanations, feature
    importance and everything else still come from the native model)."""

    def __init__(self, native: Any, export: ExportScorer):
        self._native = native
        self._export = export
        self.runtime = export.format

    @property
    def native(self) -> Any:
        """The bundle's own classifier (what explains)."""
        return self._native

    def predict_proba(self, X) -> np.ndarray:
        return self._export.predict(np.asarray(X, dtype=np.float64))

    def predict_one(self, x) -> float:
        return self._export.predict_one(np.asarray(x, dtype=np.float64))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._native, name)
