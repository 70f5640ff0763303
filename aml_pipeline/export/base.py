"""What every export shares: its error, and the parity check against the native model."""

from __future__ import annotations

import numpy as np

from aml_pipeline.errors import UserError


class ExportError(UserError):
    """An export cannot be made or does not reproduce the native scores (one line)."""


def max_abs_error(native: np.ndarray, exported: np.ndarray) -> float:
    native, exported = np.asarray(native, dtype=np.float64), np.asarray(exported, dtype=np.float64).reshape(-1)
    if native.shape != exported.shape:
        raise ExportError(f"the export returned {exported.shape[0]} scores for {native.shape[0]} rows")
    if native.size == 0:
        return 0.0
    return float(np.max(np.abs(native - exported)))
