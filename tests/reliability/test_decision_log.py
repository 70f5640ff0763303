"""The decision log is durable as configured (issue 17, part 7): its fsync policy, rotation
by size and by age keeping N files, readers that skip a torn last line (saying so once),
and every acknowledged decision readable after the writer is SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aml_pipeline.errors import UserError
from aml_pipeline.jsonl import rotated_files
from aml_pipeline.monitoring.window import read_window
from aml_pipeline.serving.replay import read_decisions
from aml_pipeline.serving.scorer import DecisionLog

ROOT = Path(__file__).resolve().parents[2]


def decision(i: int, pad: int = 0) -> dict:
    return {"event_id": f"e{i}", "event_time": f"2025-01-01T00:00:{i % 60:02d}+00:00", "jurisdiction": "US",
            "score": i / 1000, "alert": i % 7 == 0, "features": {"f": float(i), "pad": "x" * pad}}


def test_fsync_policy_always_interval_never(tmp_path):
    always = DecisionLog(tmp_path / "a.jsonl", fsync="always")
    for i in range(25):
        always.write(decision(i))
    assert always.syncs == 25  # one per line, before write() returns
    always.close()
    interval = DecisionLog(tmp_path / "i.jsonl", fsync="interval", fsync_interval_s=0.1)
    for i in range(25):
        interval.write(decision(i))
    assert interval.syncs <= 1
    time.sleep(0.5)
    assert 1 <= interval.syncs <= 3 and not interval._dirty  # the lines written are synced within the interval
    interval.close()
    never = DecisionLog(tmp_path / "n.jsonl")
    for i in range(25):
        never.write(decision(i))
    never.close()
    assert never.syncs == 0 and len(list(read_decisions(tmp_path / "n.jsonl"))) == 25
    with pytest.raises(UserError, match=r"^deploy.decision_log_policy.fsync='sometimes'; allowed: always, interval, never$"):
        DecisionLog(tmp_path / "x.jsonl", fsync="sometimes")


def test_rotation_by_size_keeps_n_files_and_readers_take_them_oldest_first(tmp_path):
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path, max_bytes=4_000, keep=3)
    for i in range(400):
        log.write(decision(i))
    log.close()
    files = rotated_files(path)
    assert [f.name for f in files] == ["decisions.jsonl.3", "decisions.jsonl.2", "decisions.jsonl.1", "decisions.jsonl"]
    assert all(f.stat().st_size <= 4_000 for f in files)
    ids = [int(d["event_id"][1:]) for d in read_decisions(path)]
    assert ids == list(range(ids[0], 400)) and ids[0] > 0  # the newest, contiguous; the oldest files dropped
    window = read_window(path, ["f"])  # task=monitor's reader takes the rotated files too
    assert sorted(int(e[1:]) for e in window["event_id"]) == ids


def test_rotation_by_age(tmp_path):
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path, max_age_s=0.3, keep=5)
    log.write(decision(0))
    log.write(decision(1))
    time.sleep(0.4)
    log.write(decision(2))  # the file is older than max_age: rotated first
    log.close()
    assert [len(f.read_text().splitlines()) for f in rotated_files(path)] == [2, 1]
    assert [d["event_id"] for d in read_decisions(path)] == ["e0", "e1", "e2"]


def test_a_torn_last_line_is_skipped_with_one_warning(tmp_path, capsys):
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path)
    for i in range(10):
        log.write(decision(i))
    log.close()
    whole = path.read_bytes()
    with open(path, "ab") as f:  # a write cut short: half a line, no newline
        f.write(json.dumps(decision(10)).encode()[:37])
    got = [d["event_id"] for d in read_decisions(path)]
    assert got == [f"e{i}" for i in range(10)]
    err = capsys.readouterr().err
    assert err.count("skipped a partial last line") == 1 and "37 bytes" in err and str(path) in err
    window = read_window(path, ["f"])
    assert window.height == 10
    assert capsys.readouterr().err.count("skipped a partial last line") == 1
    # a complete last line without its newline (written by hand) is kept; a bad line inside is still an error
    path.write_bytes(whole.rstrip(b"\n"))
    assert len(list(read_decisions(path))) == 10
    path.write_bytes(b"{oops\n" + whole)
    with pytest.raises(UserError, match="line 1: not JSON"):
        list(read_decisions(path))


WRITER = """
import sys
from aml_pipeline.serving.scorer import DecisionLog
log = DecisionLog(sys.argv[1], fsync="always", max_bytes=200_000, keep=1000)
i = 0
while True:
    log.write({"event_id": f"e{i}", "event_time": "2025-01-01T00:00:00+00:00", "score": 0.5, "alert": False,
               "features": {"pad": "y" * 20000}})
    print(i, flush=True)  # acknowledged: written and fsynced
    i += 1
"""


def test_every_acknowledged_decision_survives_sigkill(tmp_path):
    path = tmp_path / "decisions.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    acked = -1
    deadline = time.time() + 60
    while acked < 300 and time.time() < deadline:
        acked = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ids = [int(d["event_id"][1:]) for d in read_decisions(path)]
    assert ids[: acked + 1] == list(range(acked + 1))  # every acknowledged decision, in order, none torn
    assert len(rotated_files(path)) > 10  # rotation ran while it wrote


def test_the_policy_comes_from_the_composed_config(tmp_path):
    from aml_pipeline.serving.decision_log import open_decision_log
    from tests.conftest import compose_config

    cfg = compose_config(["deploy=service", "deploy.decision_log_policy.fsync=interval",
                          "deploy.decision_log_policy.fsync_interval=250ms", "deploy.decision_log_policy.max_age=1d",
                          "deploy.decision_log_policy.max_bytes=1000000", "deploy.decision_log_policy.keep=4"])
    log = open_decision_log(tmp_path / "d.jsonl", cfg.deploy.decision_log_policy)
    assert (log.fsync, log.fsync_interval_s, log.max_age_s, log.max_bytes, log.keep) == ("interval", 0.25, 86400.0,
                                                                                          1_000_000, 4)
    log.close()
    default = open_decision_log(tmp_path / "e.jsonl", compose_config(["deploy=service"]).deploy.decision_log_policy)
    assert (default.fsync, default.max_bytes, default.max_age_s) == ("never", 0, 0.0)  # as before: no sync, no rotation
    default.close()
    bad = compose_config(["deploy=service", "deploy.decision_log_policy.fsync=interval",
                          "deploy.decision_log_policy.fsync_interval=soon"])
    with pytest.raises(UserError, match=r"^deploy.decision_log_policy.fsync_interval='soon' is not a duration"):
        open_decision_log(tmp_path / "f.jsonl", bad.deploy.decision_log_policy)


def test_lines_are_strict_json_with_missing_features_as_null(tmp_path):
    """A NaN feature is written as null (strict JSON any reader takes), datetimes as ISO 8601
    in UTC, numpy numbers as numbers, non-ASCII as UTF-8; replay reads it back."""
    from datetime import datetime, timedelta, timezone

    import numpy as np

    log = DecisionLog(tmp_path / "d.jsonl")
    at = datetime(2025, 1, 1, 2, 0, 0, 250_000, tzinfo=timezone(timedelta(hours=2)))
    log.write({**decision(1), "features": {"f": float("nan"), "g": np.float64(0.5), "h": None},
               "event": {"event_time": at, "merchant": "caf\u00e9"}})
    log.close()
    line = (tmp_path / "d.jsonl").read_text(encoding="utf-8")
    assert line.endswith("\n") and line.count("\n") == 1

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    record = json.loads(line, parse_constant=refuse)
    assert record["features"] == {"f": None, "g": 0.5, "h": None}
    assert record["event"] == {"event_time": "2025-01-01T00:00:00.250000+00:00", "merchant": "caf\u00e9"}
    assert [d["event_id"] for d in read_decisions(tmp_path / "d.jsonl")] == ["e1"]
