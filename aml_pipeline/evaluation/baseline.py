"""A transparent three-rule baseline, so every report shows what the model adds.

The rules are the ones a transaction-monitoring team would write first:

* ``high_amount`` — amount >= ``high_amount`` (default: the 99.5th percentile of amounts);
* ``velocity`` — the sender made >= ``velocity_count`` transactions in the
  ``velocity_window`` strictly before this one (the window is ``[t - window, t)``: an
  event exactly ``window`` earlier counts, events at the same instant do not see each
  other, so ordering within a timestamp can never matter);
* ``structuring`` — amount in ``[reporting_threshold * (1 - band), reporting_threshold)``,
  i.e. just below the reporting threshold.

``baseline_score`` = rules fired / 3, a coarse score in {0, 1/3, 2/3, 1} that makes the
baseline's PR-AUC defined; its alert is "any rule fired" (``score >= BASELINE_THRESHOLD``).

Fairness note: the high-amount cut-off must come from the TRAINING window, as a model's
features would. Call :func:`fit_high_amount` on the training events and pass the value to
:func:`rule_baseline` for validation and test; leaving ``high_amount=None`` computes the
percentile on the frame passed, which peeks at the evaluated window's own distribution.
"""

from __future__ import annotations

import polars as pl

from aml_pipeline.errors import DataSourceError

RULES = ("high_amount", "velocity", "structuring")
#: Score at and above which the baseline alerts (any one rule fired).
BASELINE_THRESHOLD = 1.0 / len(RULES)
#: Quantile of training amounts used as the high-amount cut-off.
HIGH_AMOUNT_QUANTILE = 0.995
REQUIRED = ("event_id", "event_time", "src_account", "amount")


def fit_high_amount(train_events: pl.DataFrame, quantile: float = HIGH_AMOUNT_QUANTILE) -> float:
    """The high-amount cut-off learnt on the training window (inf when it has no amounts)."""
    value = train_events.select(pl.col("amount").quantile(quantile, interpolation="linear")).item()
    return float("inf") if value is None else float(value)


def _check_columns(events: pl.DataFrame) -> None:
    missing = [c for c in REQUIRED if c not in events.columns]
    if missing:
        raise DataSourceError(f"rule baseline needs canonical columns {missing}; "
                              f"the frame has {events.columns}")


def velocity_counts(events: pl.DataFrame, window: str = "24h") -> pl.Series:
    """Per event, how many transactions its sender made in ``[t - window, t)``.

    Uses polars' rolling window with ``closed="left"`` per sender; the frame is sorted by
    (sender, time) for the window and restored to its input order afterwards.
    """
    counted = (
        events.select("src_account", "event_time")
        .with_row_index("_row")
        .sort("src_account", "event_time")
        .with_columns(
            pl.len().rolling(index_column="event_time", period=window, closed="left")
            .over("src_account").alias("velocity_count")
        )
        .sort("_row")
    )
    return counted.get_column("velocity_count").cast(pl.Int64)


def rule_baseline(
    events: pl.DataFrame,
    high_amount: float | None = None,
    velocity_window: str = "24h",
    velocity_count: int = 5,
    reporting_threshold: float = 10_000.0,
    structuring_band: float = 0.1,
) -> pl.DataFrame:
    """``event_id, baseline_score, rules_fired`` for each event, in input order.

    ``rules_fired`` is a list of rule names (empty when none fired). See the module
    docstring for the rules and for why ``high_amount`` should come from training data.
    """
    _check_columns(events)
    cut = fit_high_amount(events) if high_amount is None else float(high_amount)
    low = reporting_threshold * (1.0 - structuring_band)
    amount = pl.col("amount")
    fired = {
        "high_amount": amount >= cut,
        "velocity": pl.col("velocity_count") >= velocity_count,
        "structuring": (amount >= low) & (amount < reporting_threshold),
    }
    fired = {name: expr.fill_null(False) for name, expr in fired.items()}
    n_fired = pl.sum_horizontal([expr.cast(pl.Int8) for expr in fired.values()])
    names = pl.concat_list([pl.when(expr).then(pl.lit(name)).otherwise(pl.lit(None, pl.String))
                            for name, expr in fired.items()]).list.drop_nulls()
    return (
        events.select("event_id", "amount")
        .with_columns(velocity_counts(events, velocity_window).alias("velocity_count"))
        .select(
            "event_id",
            (n_fired.cast(pl.Float64) / float(len(RULES))).alias("baseline_score"),
            names.alias("rules_fired"),
        )
    )
