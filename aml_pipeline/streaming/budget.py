"""Alert budget: at most ``cap`` alerts per key (merchant, region, jurisdiction) in any
trailing event-time window; the alerts over it are *deferred*, never dropped.

Investigators have finite capacity, but regulators forbid suppressing alerts for lack of
reviewers: an alert over the budget goes to the deferred output with the reason (key,
count in the window, cap) and stays reviewable. The decision depends only on event times
and the order the scorer emits alerts in (event time, then event id), so a replayed
micro-batch defers exactly the same alerts. The state (recent kept-alert times per key) is
small and is saved with the scorer's state after every batch.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from aml_pipeline.features.windows import duration_us

#: Value standing for a null key (e.g. alerts without a merchant share one budget).
NO_KEY = "(none)"


class AlertBudget:
    def __init__(self, key: str, window: str, cap: int):
        self.key = key
        self.window = window
        self.window_us = duration_us(window)
        self.cap = int(cap)
        #: key value -> event times (µs, ascending) of the alerts kept within the window.
        self.kept: dict[str, list[int]] = {}

    @property
    def enabled(self) -> bool:
        return self.cap > 0

    def admit(self, key_value: Any, t_us: int) -> str | None:
        """None to keep the alert (and count it), or the reason it is deferred."""
        if not self.enabled:
            return None
        k = NO_KEY if key_value is None else str(key_value)
        times = self.kept.setdefault(k, [])
        lo = t_us - self.window_us
        del times[:bisect_left(times, lo)]  # drop alerts that left the window [t - window, t]
        if len(times) >= self.cap:
            return (f"alert budget: {self.key}={k} already has {len(times)} alerts in the trailing {self.window} "
                    f"(cap {self.cap})")
        times.insert(bisect_left(times, t_us + 1), t_us)
        return None

    # -- state ------------------------------------------------------------------------------
    def state(self) -> dict[str, list[int]]:
        return {k: v for k, v in self.kept.items() if v}

    def load(self, state: dict[str, list[int]] | None) -> "AlertBudget":
        self.kept = {k: list(v) for k, v in (state or {}).items()}
        return self
