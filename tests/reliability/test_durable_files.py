"""The streaming scorer's checkpoint files reach the disk before ``state.json`` names them.

A power loss cannot be staged in a test, but the order of the system calls that make a
file durable can be watched: the scorer's state log runs under ``strace`` and every file it
replaces must be ``fsync``-ed before its rename, its directory ``fsync``-ed after it, and the
files ``state.json`` names must be durable before ``state.json`` itself is renamed into place.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from aml_pipeline.jsonl import replace_durably
from tests.conftest import ROOT

COMMIT = """
import sys
import polars as pl
from aml_pipeline.streaming.scorer import StateLog

log = StateLog(sys.argv[1])
rows = pl.DataFrame({"event_id": ["e1", "e2"], "amount": [1.0, 2.0]})
log.commit("000000000000", {"batch_id": 0}, rows, rows.head(1))
log.commit("000000000001", {"batch_id": 1}, rows, rows.head(0))
log.snapshot("000000000001", rows)
"""

CALL = re.compile(r"^(?P<pid>\d+)\s+(?P<call>openat|fsync|rename|renameat2?)\((?P<args>.*)\)\s+=\s+(?P<ret>-?\d+)")


def _trace(tmp_path: Path) -> list[tuple[str, str]]:
    """(event, path) in order: ``fsync`` of a path, ``rename`` to a path, for the state log's directory."""
    if shutil.which("strace") is None:
        if os.environ.get("CI"):
            pytest.fail("strace is missing (.ci/run installs it with apt-get)")
        pytest.skip("strace is not installed (apt-get install -y strace)")
    state = tmp_path / "scorer"
    out = tmp_path / "trace.txt"
    calls = "trace=openat,fsync,rename,renameat,renameat2"
    r = subprocess.run(["strace", "--seccomp-bpf", "-f", "-o", str(out), "-e", calls, sys.executable, "-c", COMMIT, str(state)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    if r.returncode != 0 and "ptrace" in r.stderr.lower():
        pytest.skip(f"strace cannot trace here: {r.stderr.strip().splitlines()[0]}")
    assert r.returncode == 0, r.stderr[-3000:]
    fds: dict[tuple[str, str], str] = {}
    events = []
    for line in out.read_text().splitlines():
        m = CALL.match(line)
        if not m or int(m["ret"]) < 0:
            continue
        args = m["args"]
        if m["call"] == "openat":
            fds[(m["pid"], m["ret"])] = re.search(r'"([^"]*)"', args).group(1)
        elif m["call"] == "fsync":
            path = fds.get((m["pid"], args.strip()))
            if path and path.startswith(str(state)):
                events.append(("fsync", path))
        else:
            target = re.findall(r'"([^"]*)"', args)[-1]
            if target.startswith(str(state)):
                events.append(("rename", target))
    return events


def test_state_log_files_are_fsynced_before_state_json_names_them(tmp_path):
    events = _trace(tmp_path)
    state = tmp_path / "scorer"
    renames = [i for i, (e, _) in enumerate(events) if e == "rename"]
    assert {Path(events[i][1]).name for i in renames} >= {"state.json", "rows-000000000000.parquet",
                                                        "pending-000000000000.parquet", "snapshot-000000000001.parquet"}
    for i in renames:
        final = Path(events[i][1])
        tmp = str(final.with_name(f".{final.name}.tmp"))
        assert ("fsync", tmp) in events[:i], f"{final.name} renamed before its data was fsync-ed"
        assert ("fsync", str(state)) in events[i + 1:], f"no directory fsync after {final.name}'s rename"
    # each state.json names files that are durable (renamed, directory synced) before it is replaced
    for i in renames:
        if Path(events[i][1]).name != "state.json":
            continue
        before = events[:i]
        if any(e == "rename" and "pending-000000000001" in p for e, p in events[:i + 1]):
            named = ["pending-000000000001.parquet", "rows-000000000001.parquet"]
        else:
            named = ["pending-000000000000.parquet", "rows-000000000000.parquet"]
        for name in named:
            at = max(j for j, ev in enumerate(before) if ev == ("rename", str(state / name)))
            assert ("fsync", str(state)) in before[at + 1:], f"state.json replaced before {name}'s rename was synced"


def test_replace_durably_replaces_whole_or_not_at_all(tmp_path):
    p = tmp_path / "state.json"
    replace_durably(p, '{"batch_id": 1}')
    replace_durably(tmp_path / "b.bin", b"\x00\x01")
    replace_durably(tmp_path / "f.parquet", pl.DataFrame({"a": [1, 2]}).write_parquet)
    assert p.read_text() == '{"batch_id": 1}' and (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert pl.read_parquet(tmp_path / "f.parquet")["a"].to_list() == [1, 2]

    def torn(path: Path) -> None:
        path.write_text('{"batch_')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_durably(p, torn)
    assert p.read_text() == '{"batch_id": 1}'  # the old file stays whole
    assert sorted(x.name for x in tmp_path.iterdir() if not x.name.startswith(".")) == ["b.bin", "f.parquet", "state.json"]
