"""Which steps run per account partition, and which account's history each column reads.

The values themselves are compared with polars in ``tests/test_spark_parity.py``
(``test_account_partitions_give_the_polars_values``); these checks need no JVM.
"""

from __future__ import annotations

import pytest

pytest.importorskip("pyspark")

from aml_pipeline.features.plan import FeaturePlan  # noqa: E402
from aml_pipeline.spark.accounts import partitionable, split_plan  # noqa: E402
from aml_pipeline.spark.features import spark_fit  # noqa: E402

INPUTS = ["event_id", "event_time", "src_account", "dst_account", "amount", "channel", "currency", "label", "split"]


def fitted_in_spark(step) -> bool:
    return spark_fit(step) is not None


def names(steps) -> list[str]:
    return [name for name, _ in steps]


def test_target_encodings_and_steps_fitted_on_computed_columns_run_after_the_partitions():
    plan = FeaturePlan.from_config({
        "time": {}, "amount": {}, "graph": {},
        "te": {"kind": "target_encoding", "columns": ["src_account"]},
        "buckets": {"kind": "bucketing", "columns": ["amount"]},
        "log_buckets": {"kind": "bucketing", "columns": ["log_amount"]},  # fitted on amount's output
    })
    local, rest = split_plan(plan, INPUTS, fitted_in_spark)
    assert names(local) == ["time", "amount", "graph", "buckets"]
    assert names(rest) == ["te", "log_buckets"]
    assert not partitionable(dict(plan.steps)["te"])  # its training values are time-respecting
    assert all(partitionable(step) for _, step in local)


def test_each_column_reads_its_own_accounts_history():
    plan = FeaturePlan.from_config({
        "time": {}, "amount": {}, "rolling": {"windows": ["1h"], "sides": ["src", "dst"]},
        "graph": {"window": "24h"}, "balance": {},
    })
    sides = {c: step.history_side(c) for _, step in plan.steps for c in step.output_columns()}
    assert sides["dst_secs_since_prev"] == sides["dst_in_count_1h"] == sides["dst_2hop_in_24h"] == "dst"
    assert sides["src_secs_since_prev"] == sides["src_out_sum_1h"] == sides["amount_vs_src_mean"] == "src"
    # payments back to the sender and paths into it: the sender's partition holds them
    assert sides["reciprocal_24h"] == sides["cycle3_24h"] == sides["src_2hop_in_24h"] == "src"
    # a step without history reads the event alone, whatever its column names
    assert sides["src_balance_error"] is sides["dst_balance_error"] is None
    graph = dict(plan.steps)["graph"]
    graph.hubs_ = ["PAYROLL"]
    assert graph.two_hop() == ("24h", ["PAYROLL"])
    assert dict(plan.steps)["rolling"].two_hop() is None
