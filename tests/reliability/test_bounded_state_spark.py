"""Bounded state in ``deploy.state=spark``: Spark's per-account state forgets accounts idle
longer than ``deploy.store.retention``, and the stream still gives the batch's values.

Reuses the quickstart run of ``tests/test_stream_spark_state.py`` (the per-account plan,
the ``task=score`` reference, the test window as out-of-order files) with a retention just
above the plan's 7-day window plus the 1-day lateness.
"""

from __future__ import annotations

import json
import math

import pytest

from aml_pipeline.streaming.outputs import read_jsonl
from tests.conftest import run_cli
from tests.test_stream import decisions_of, write_files
from tests.test_stream_spark_state import run, spark_args  # noqa: F401 (the module's fixture)

RETENTION_S = 9 * 86400  # > 7d window + 1d lateness


@pytest.mark.slow
def test_spark_state_forgets_idle_accounts_and_keeps_batch_values(run):  # noqa: F811
    base = run.dir / "retention"
    records = write_files(base / "in", run.files)
    r = run_cli(spark_args(run, "retention", "deploy.once=true", "deploy.max_files_per_trigger=2",
                           "deploy.store.retention=9d"), cwd=run.dir, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    summary = json.loads((base / "reports/stream_summary.json").read_text())
    assert summary["reconciles"] is True and summary["counts"]["records_in"] == records
    assert summary["evicted_accounts"] > 0 and summary["expired_halves"] == 0
    decisions = decisions_of(base / "out")
    gap_columns = ("src_secs_since_prev", "dst_secs_since_prev")
    forgotten = 0
    for d in decisions.iter_rows(named=True):
        ref = run.ref[d["event_id"]]
        differs = False
        for c in run.columns:
            e, g = ref[c], d[c]
            e_missing, g_missing = e is None or e != e, g is None or g != g
            if c in gap_columns and not e_missing and e > RETENTION_S - 86400 and g_missing:
                differs = True  # forgotten: reads as a first event (docs/reliability.md)
                continue
            if e_missing:
                assert g_missing, (d["event_id"], c, e, g)
            else:
                assert not g_missing and abs(e - g) <= 1e-9 * max(1.0, abs(e)), (d["event_id"], c, e, g)
        forgotten += differs
        if not differs:
            assert math.isclose(d["score"], ref["score"], rel_tol=1e-9, abs_tol=1e-12), d["event_id"]
    assert read_jsonl(base / "out" / "dead_letter")  # the hostile records are still dead letters
    # every stream alert re-scores from the stream's decisions output alone (deploy.replay)
    from aml_pipeline.serving.replay import replay

    again = replay(run.bundle, base / "out" / "decisions", "alerts")
    assert again and all(x["same"] for x in again) and len(again) == decisions["alert"].sum()
    print(f"evicted accounts {summary['evicted_accounts']}, events reading a forgotten account {forgotten}")
