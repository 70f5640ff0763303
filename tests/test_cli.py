"""The command line as a user runs it: tasks succeed, user errors are one line and exit 2."""

from __future__ import annotations

import json

import polars as pl
import pytest

from aml_pipeline import CONF_DIR
from tests.conftest import DATA, run_cli


def test_data_task_on_paysim_writes_layers_and_summary(tmp_path):
    res = run_cli(["task=data", "source=paysim", f"source.path={DATA / 'paysim_head3000.csv'}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "data/validated/summary.json").read_text())
    assert summary["rows_read"] == 3000 and summary["rows_valid"] == 3000 and summary["reconciles"]
    assert summary["labels"]["positive"] == 16  # isFraud=1 rows in steps 1-2 of the file
    assert pl.read_parquet(tmp_path / "data/validated/transactions.parquet").height == 3000
    assert "counts reconcile" in res.stdout


def test_docs_csv_mapping_example_runs(tmp_path):
    """The bank-export example of docs/data.md: mapping, cents, local time, all from config."""
    (tmp_path / "export.csv").write_text(
        "txn_id,booked_at,debtor,creditor,amount_cents,sar\n"
        "T1,01/03/2025 09:15,NL01,NL02,12345,0\n"
        "T2,01/03/2025 10:00,NL02,NL03,99,1\n"
        "T2,02/03/2025 10:00,NL02,NL03,5,0\n"
        "T4,xx,NL02,NL03,5,0\n"
    )
    res = run_cli([
        "task=data", "source=csv", "source.path=export.csv",
        "source.columns={event_id:txn_id,event_time:booked_at,src_account:debtor,dst_account:creditor,amount:amount_cents,label:sar}",
        "source.constants={currency:EUR}", "source.amount_scale=0.01", "source.timezone=Europe/Amsterdam",
        "source.time_format='%d/%m/%Y %H:%M'",
    ], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    valid = pl.read_parquet(tmp_path / "data/validated/transactions.parquet")
    assert valid["event_id"].to_list() == ["T1", "T2"]
    assert valid["amount"].to_list() == [123.45, 0.99]
    assert str(valid["event_time"][0]) == "2025-03-01 08:15:00+00:00"  # 09:15 CET
    q = pl.read_parquet(tmp_path / "data/quarantine/quarantine.parquet")
    assert q["source_line"].to_list() == [4, 5]
    assert q["reasons"].to_list() == [["duplicate_event_id"], ["invalid_event_time"]]
    assert json.loads(q["record"][1])["booked_at"] == "xx"


@pytest.mark.parametrize("args, needle", [
    (["source=paysim", "source.path=missing.csv"], "paysim: file not found: missing.csv"),
    (["source=csv", "source.path=x.csv", "source.columns={when:t}"], "source.columns.when"),
    # Hydra's own reports (before the job runs): an enum value, an unknown option of a group
    (["engine.name=spork"], "Error merging override engine.name=spork: Invalid value 'spork', expected one of [polars, spark]"),
    (["deploy=bogus"], "Could not find 'deploy/bogus'; Available options in 'deploy': file, kafka, service"),
])
def test_user_errors_are_one_line_exit_2(tmp_path, args, needle):
    res = run_cli(["task=data", *args], cwd=tmp_path)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_wrong_delimiter_is_named(tmp_path):
    src = (DATA / "paysim_head3000.csv").read_text().splitlines()[:5]
    (tmp_path / "semi.csv").write_text("\n".join(line.replace(",", ";") for line in src) + "\n")
    res = run_cli(["task=data", "source=paysim", "source.path=semi.csv"], cwd=tmp_path)
    assert res.returncode == 2 and "delimiter ';'" in res.stderr and "semi.csv" in res.stderr


def test_console_command_runs_a_task_from_any_folder(tmp_path):
    """``aml-pipeline`` (the installed console command) finds the configs from any working
    folder and behaves as ``python -m aml_pipeline``: a task runs, a user error is one line."""
    import shutil
    import subprocess

    from tests.conftest import cli_env

    command = shutil.which("aml-pipeline")
    assert command, "the aml-pipeline console command is not installed (pip install -e .)"
    ok = subprocess.run([command, "task=data", "source=paysim", f"source.path={DATA / 'paysim_head3000.csv'}"],
                        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "data/validated/summary.json").read_text())["rows_valid"] == 3000
    bad = subprocess.run([command, "task=data", "source.days=3"], cwd=tmp_path, env=cli_env(),
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == ["error: source.days must be an integer >= 7 (got 3)"]


def test_help_lists_every_task_and_every_option_of_every_group(tmp_path):
    """``--help`` is the user's map: every task, every group of conf/ with all its options
    (and none of the internal ``base_*`` schemas)."""
    import re

    from aml_pipeline.config import Task

    res = run_cli(["--help"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    text = res.stdout
    tasks, groups = text.split("== Config groups")
    listed_tasks = set(re.findall(r"^  (\w+) ", tasks, re.M))
    assert listed_tasks == {t.value for t in Task} - {"sweep_summary"}  # a sweep's callback, not a user's task
    listed = {m[0]: m[1].split(", ") for m in re.findall(r"^  (\w+) +([\w, ]+):", groups, re.M)}
    on_disk = {d.name: sorted(p.stem for p in d.glob("*.yaml")) for d in CONF_DIR.iterdir() if d.is_dir()}
    assert {g: sorted(o) for g, o in listed.items()} == on_disk
    assert "base_" not in text
