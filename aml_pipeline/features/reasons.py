"""Alerts in plain words: the reasons an analyst reads beside a score.

Built from an alert's top contributing features and their values, at scoring time, so
the case page shows what the model saw then.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional


def _fmt(value: Any) -> str:
    if value is None:
        return "missing"
    if isinstance(value, float) and value.is_integer():
        return f"{int(value):,}"
    return f"{value:,.3g}" if isinstance(value, float) else str(value)


def reasons_and_hint(top_features: Iterable[dict], row: Optional[dict] = None) -> tuple[list[str], Optional[str]]:
    """Sentences for the features that raised the score, and a typology hint (or None)."""
    words = []
    for f in top_features or []:
        c = f.get("contribution")
        if c is not None and c <= 0:
            continue
        words.append(f"{f.get('feature')} was {_fmt(f.get('value'))}")
    return words, None
