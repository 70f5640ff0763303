"""One row through a LightGBM Booster by the C library's single-row fast path.

Why: ``Booster.predict`` on one row spends most of its time in Python around the tree
walk: it builds an inner predictor, parses the parameter string and checks the array every
call.
LightGBM's C API has a path made for online scoring:
``LGBM_BoosterPredictForMatSingleRowFastInit`` fixes the model, the prediction type, the
iterations, the column count and the parameters once, and
``LGBM_BoosterPredictForMatSingleRowFast`` then scores one float64 row with a single call:
``python bench/profile_service.py --parts 1000`` gives 28 instead of 55 µs of CPU per row
of the quickstart's test window. It runs the same C++ predictor over the same trees, so
the score is the same double (tests/test_models.py compares them on rows with missing
values; the bench asserts it on every row it times).

The fast path goes through ``lightgbm.basic._LIB``, the package's handle on its own C
library; it is not public API. If a LightGBM release moves it, :func:`single_row_predictor`
returns None and callers keep ``Booster.predict``.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Callable

import lightgbm as lgb
import numpy as np

_PREDICT_NORMAL = 0  # C_API_PREDICT_NORMAL: probabilities, with the objective's transform
_FLOAT64 = 1  # C_API_DTYPE_FLOAT64


class _FastConfig:
    """The C library's FastConfig for one Booster; freed with it. One call at a time: the
    config holds the row buffer the C code fills."""

    def __init__(self, lib, booster: lgb.Booster):
        self._lib = lib
        self._booster = booster  # the config points into it: keep it alive as long
        self._handle = ctypes.c_void_p()
        # Booster.predict's own choice of trees: best_iteration (<= 0: all of them)
        _check(lib, lib.LGBM_BoosterPredictForMatSingleRowFastInit(
            booster._handle, ctypes.c_int(_PREDICT_NORMAL), ctypes.c_int(0), ctypes.c_int(booster.best_iteration),
            ctypes.c_int(_FLOAT64), ctypes.c_int32(booster.num_feature()), ctypes.c_char_p(b"num_threads=1"),
            ctypes.byref(self._handle)))
        self._out = np.zeros(1, dtype=np.float64)
        self._out_ptr = self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_double))
        self._out_len = ctypes.c_int64()
        self._n = booster.num_feature()
        # the row is copied into a buffer of our own, whose address is taken once
        self._row = np.zeros(self._n, dtype=np.float64)
        self._row_ptr = ctypes.c_void_p(self._row.ctypes.data)
        self._out_len_ref = ctypes.byref(self._out_len)
        self._lock = threading.Lock()

    def __call__(self, row: np.ndarray) -> float:
        """P(label=1) of one row of the model's features (float64: copied as is)."""
        with self._lock:
            self._row[:] = np.ravel(row)
            _check(self._lib, self._lib.LGBM_BoosterPredictForMatSingleRowFast(
                self._handle, self._row_ptr, self._out_len_ref, self._out_ptr))
            return float(self._out[0])

    def __del__(self):
        handle, self._handle = getattr(self, "_handle", None), None
        if handle is not None and handle.value:
            self._lib.LGBM_FastConfigFree(handle)


def _check(lib, code: int) -> None:
    if code != 0:
        raise lgb.basic.LightGBMError(lib.LGBM_GetLastError().decode("utf-8"))


def single_row_predictor(booster: lgb.Booster) -> Callable[[np.ndarray], float] | None:
    """``row -> P(label=1)`` through the C fast path, or None where this LightGBM does not
    expose it (then ``Booster.predict`` serves; see module doc)."""
    lib = getattr(getattr(lgb, "basic", None), "_LIB", None)
    names = ("LGBM_BoosterPredictForMatSingleRowFastInit", "LGBM_BoosterPredictForMatSingleRowFast",
             "LGBM_FastConfigFree", "LGBM_GetLastError")
    if lib is None or not all(hasattr(lib, n) for n in names) or not hasattr(booster, "_handle"):
        return None
    lib.LGBM_GetLastError.restype = ctypes.c_char_p
    return _FastConfig(lib, booster)
