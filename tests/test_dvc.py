"""The DVC pipeline (dvc.yaml + .dvc/config's Hydra integration) with real ``dvc`` commands.

Fast checks (always): the committed params.yaml is what ``python -m aml_pipeline.compose``
writes for the current conf/, DVC's own Hydra composition (what ``dvc exp run`` writes)
is byte for byte the same, and every param / dep dvc.yaml names exists.

Slow checks (``slow``): in a temporary git copy of the project with a small simulator and
small models, ``dvc repro`` runs every stage, a second ``dvc repro`` runs none, a feature
parameter edited in conf/ re-runs compose/features/train/evaluate/monitor but not data, and
``dvc exp run -S model=sklearn_hgb`` trains the HGB model while the baseline stays intact.
The slow tests share one copy and build on each other in file order; each also works
when selected alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from hydra.core.global_hydra import GlobalHydra

from aml_pipeline.compose import compose_params

ROOT = Path(__file__).resolve().parents[1]
COPY = ["aml_pipeline", "dvc.yaml", ".dvc", ".dvcignore", ".gitignore", "pyproject.toml", "params.yaml"]
STAGES = ["compose", "data", "features", "train", "evaluate", "monitor"]
HGB = "aml_pipeline.models.classifiers.HistGradientBoostingClassifier"
LGBM = "aml_pipeline.models.classifiers.LightGBMClassifier"
OUTPUTS = ["reports/metrics.json", "models/bundle/manifest.json", "data/validated/summary.json", "reports/monitor/monitor.json"]


# ------------------------------------------------------------------------------- fast
def _dvc_compose(overrides: list[str], out: Path) -> str:
    """params.yaml as ``dvc exp run -S ...`` writes it: DVC's own code, in a fresh process.

    Reads the [hydra] section of the repo's DVC config exactly as dvc/repo/experiments/
    queue/base.py does; runs from outside the repo without PYTHONPATH, so the typed schemas
    can only come from the plugin under ``plugins_path`` (as inside the ``dvc`` process).
    """
    script = textwrap.dedent("""
        import json, os, sys
        from dvc.repo import Repo
        from dvc.utils.hydra import compose_and_dump
        root, out, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
        hydra = Repo(root).config.get("hydra", {})
        assert hydra.get("enabled"), "[hydra] enabled = true is missing from .dvc/config"
        compose_and_dump(out, os.path.join(root, hydra.get("config_dir", "aml_pipeline/conf")), None,
                         hydra.get("config_name", "config"),
                         os.path.join(root, hydra.get("plugins_path", "")), overrides)
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script, str(ROOT), str(out), json.dumps(overrides)],
                          cwd=out.parent, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out.read_text(encoding="utf-8")


def _ours(overrides: list[str]) -> str:
    GlobalHydra.instance().clear()
    try:
        return compose_params(overrides)
    finally:
        GlobalHydra.instance().clear()


def test_committed_params_yaml_is_composed_from_conf():
    expected = _ours([])
    actual = (ROOT / "params.yaml").read_text(encoding="utf-8")
    assert actual == expected, (
        "params.yaml is stale: conf/ changed without re-composing. "
        "Run `python -m aml_pipeline.compose` and commit params.yaml.")


@pytest.mark.parametrize("overrides", [[], ["model=sklearn_hgb", "features.steps.graph.window=3d", "seed=7"]],
                         ids=["defaults", "overrides"])
def test_dvc_hydra_composition_matches_compose_stage(tmp_path, overrides):
    """Same text from both writers: otherwise params.yaml flip-flops between them and
    ``dvc repro`` after ``dvc exp run`` re-runs stages for formatting alone."""
    assert _dvc_compose(overrides, tmp_path / "params.yaml") == _ours(overrides)


def test_dvc_yaml_params_and_deps_exist():
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    produced = {next(iter(o)) if isinstance(o, dict) else o
                for stage in pipeline["stages"].values()
                for kind in ("outs", "metrics", "plots") for o in stage.get(kind, [])}
    for name, stage in pipeline["stages"].items():
        for key in stage.get("params", []):
            node = params
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"stage {name}: param {key} not in params.yaml"
                node = node[part]
        for dep in stage.get("deps", []):
            assert dep in produced or (ROOT / dep).exists(), f"stage {name}: dep {dep} does not exist"


# ------------------------------------------------------------------------------- slow
SMALL = {
    # ~10k transactions with ~190 positives: every stage in seconds.
    "aml_pipeline/conf/source/synthetic.yaml": [("n_accounts: 20000", "n_accounts: 600"), ("days: 90", "days: 30"),
                                   ("laundering_rate: 0.004", "laundering_rate: 0.02")],
    "aml_pipeline/conf/model/lightgbm.yaml": [("n_estimators: 500", "n_estimators: 40")],
    "aml_pipeline/conf/model/sklearn_hgb.yaml": [("max_iter: 500", "max_iter: 20")],
    # MLflow's log_model costs ~7 s per evaluate; only the queue test turns it on (-S).
    "aml_pipeline/conf/mlflow/local.yaml": [("enabled: true", "enabled: false")],
}


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} not found once in {path}"
    path.write_text(text.replace(old, new))


def _env(project: Path) -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PYTHONPATH": str(project), "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
            "DVC_NO_ANALYTICS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def _run(project: Path, *args: str, timeout: int = 600) -> str:
    proc = subprocess.run(list(args), cwd=project, env=_env(project), capture_output=True, text=True,
                          timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{out[-6000:]}"
    return out


def dvc(project: Path, *args: str) -> str:
    return _run(project, sys.executable, "-m", "dvc", *args)


def git(project: Path, *args: str) -> str:
    return _run(project, "git", *args)


def ran(output: str) -> list[str]:
    return re.findall(r"^Running stage '([^']+)'", output, flags=re.M)


def skipped(output: str) -> list[str]:
    return re.findall(r"^Stage '([^']+)' didn't change, skipping", output, flags=re.M)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, str]:
    """A git copy of the project with small settings, after its first ``dvc repro``."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    proj = tmp_path_factory.mktemp("dvc") / "project"
    proj.mkdir()
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            skip = ["__pycache__", "*.pyc"] + (["tmp", "cache", "config.local"] if name == ".dvc" else [])
            shutil.copytree(src, proj / name, ignore=shutil.ignore_patterns(*skip))
        else:
            shutil.copy2(src, proj / name)
    for rel, edits in SMALL.items():
        for old, new in edits:
            _edit(proj / rel, old, new)
    git(proj, "init", "-q")
    git(proj, "config", "user.name", "aml_pipeline tests")
    git(proj, "config", "user.email", "tests@example.invalid")
    git(proj, "config", "commit.gpgsign", "false")
    git(proj, "add", "-A")
    git(proj, "commit", "-q", "-m", "project copy, small settings")
    return proj, dvc(proj, "repro")


def _mtimes(project: Path) -> dict[str, int]:
    files = [*OUTPUTS, "params.yaml", "dvc.lock", "data/features/features.parquet", "models/registered.json"]
    return {f: (project / f).stat().st_mtime_ns for f in files}


@pytest.mark.slow
def test_repro_on_fresh_copy_runs_every_stage(project):
    proj, out = project
    assert ran(out) == STAGES, out[-4000:]
    for rel in OUTPUTS:
        assert (proj / rel).is_file(), rel
    params = yaml.safe_load((proj / "params.yaml").read_text())
    assert (params["source"]["n_accounts"], params["source"]["days"], params["source"]["laundering_rate"]) == (600, 30, 0.02)
    assert params["model"]["_target_"] == LGBM
    assert json.loads((proj / "data/validated/summary.json").read_text())["reconciles"] is True
    assert json.loads((proj / "models/bundle/manifest.json").read_text())["model"]["class"] == "lightgbm"
    assert json.loads((proj / "reports/metrics.json").read_text())["pr_auc"] > 0
    # monitor: evaluate's test decisions against the bundle's reference, drift as a metric
    report = json.loads((proj / "reports/monitor/monitor.json").read_text())
    assert report["window"]["events"] > 0 and isinstance(report["drift_detected"], bool) and report["exit_code"] == 0
    # evaluate's declared out exists with MLflow off, and says nothing was registered.
    assert json.loads((proj / "models/registered.json").read_text())["registered"] is False


@pytest.mark.slow
def test_second_repro_does_nothing(project):
    proj, _ = project
    before = _mtimes(proj)
    out = dvc(proj, "repro")
    assert ran(out) == [], out
    assert skipped(out) == STAGES, out
    assert "Data and pipelines are up to date" in out
    assert _mtimes(proj) == before
    assert "up to date" in dvc(proj, "status")


@pytest.mark.slow
def test_feature_param_change_reruns_downstream_not_data(project):
    proj, _ = project
    dvc(proj, "repro")  # settled, whichever tests ran before
    _edit(proj / "aml_pipeline/conf/features/default.yaml", "  graph:\n    window: 7d", "  graph:\n    window: 3d")
    data_before = (proj / "data/validated/transactions.parquet").stat().st_mtime_ns
    out = dvc(proj, "repro")
    assert ran(out) == ["compose", "features", "train", "evaluate", "monitor"], out[-4000:]
    assert skipped(out) == ["data"], out[-4000:]
    assert (proj / "data/validated/transactions.parquet").stat().st_mtime_ns == data_before
    params = yaml.safe_load((proj / "params.yaml").read_text())
    assert params["features"]["steps"]["graph"]["window"] == "3d"
    plan = (proj / "data/features/plan.json").read_text()
    assert "3d" in plan
    # An edit that does not change any value (a comment) re-runs only compose.
    path = proj / "aml_pipeline/conf/features/default.yaml"
    path.write_text(path.read_text() + "# a comment\n")
    out = dvc(proj, "repro")
    assert ran(out) == ["compose"], out[-4000:]


@pytest.mark.slow
def test_exp_run_with_model_override(project):
    proj, _ = project
    dvc(proj, "repro")
    git(proj, "add", "-A")
    git(proj, "commit", "-q", "-m", "baseline: lightgbm")
    baseline_lock = (proj / "dvc.lock").read_text()
    baseline_metrics = json.loads((proj / "reports/metrics.json").read_text())

    out = dvc(proj, "exp", "run", "-n", "hgb", "-S", "model=sklearn_hgb")
    # DVC composed conf/ + the override into params.yaml: only train and evaluate re-run.
    assert ran(out) == ["train", "evaluate", "monitor"], out[-4000:]
    params = yaml.safe_load((proj / "params.yaml").read_text())
    assert params["model"]["_target_"] == HGB
    assert params["source"]["n_accounts"] == 600  # the rest of conf/ is still composed
    manifest = json.loads((proj / "models/bundle/manifest.json").read_text())
    assert manifest["model"]["class"] == "sklearn_hgb"
    exp_metrics = json.loads((proj / "reports/metrics.json").read_text())
    assert exp_metrics != baseline_metrics

    rows = json.loads(dvc(proj, "exp", "show", "--json"))
    head = next(r for r in rows if r["rev"] != "workspace")
    exp = next(rev for e in head["experiments"] or [] for rev in e["revs"] if rev["name"] == "hgb")

    def target(row):
        return row["data"]["params"]["params.yaml"]["data"]["model"]["_target_"]

    def pr_auc(row):
        return row["data"]["metrics"]["reports/metrics.json"]["data"]["pr_auc"]

    assert target(head) == LGBM and target(exp) == HGB
    # Metrics of committed revisions come from the DVC cache (reports/ is git-ignored).
    assert pr_auc(head) == baseline_metrics["pr_auc"]
    assert pr_auc(exp) == exp_metrics["pr_auc"]

    # The workspace holds the experiment's results, consistently: nothing to re-run,
    # conf/ untouched, and no stage re-runs for params.yaml formatting.
    assert "up to date" in dvc(proj, "status")
    assert ran(dvc(proj, "repro")) == []
    assert git(proj, "status", "--porcelain", "--", "aml_pipeline/conf") == ""
    # The baseline is intact: back to the commit, every output restores from the cache.
    git(proj, "checkout", "--", "params.yaml", "dvc.lock", "models/registered.json")
    dvc(proj, "checkout")
    assert (proj / "dvc.lock").read_text() == baseline_lock
    assert "up to date" in dvc(proj, "status")
    assert json.loads((proj / "models/bundle/manifest.json").read_text())["model"]["class"] == "lightgbm"
    assert json.loads((proj / "reports/metrics.json").read_text()) == baseline_metrics


@pytest.mark.slow
def test_queued_experiment_runs_in_temp_copy_and_logs_to_project_mlflow(project):
    """``--queue`` + ``--run-all`` (how sweeps run) executes in .dvc/tmp/exps; the MLflow
    run must still land in the project's store (mlruns/), which registered.json points at."""
    proj, _ = project
    dvc(proj, "repro")
    git(proj, "add", "-A")
    git(proj, "commit", "-q", "--allow-empty", "-m", "before the queue")
    params_before = (proj / "params.yaml").read_text()
    dvc(proj, "exp", "run", "--queue", "-n", "topk3", "-S", "scoring.top_k=3", "-S", "mlflow.enabled=true")
    out = dvc(proj, "exp", "run", "--run-all")
    assert ran(out) in (["evaluate", "monitor"], ["compose", "evaluate", "monitor"]), out[-4000:]

    rows = json.loads(dvc(proj, "exp", "show", "--json"))
    head = next(r for r in rows if r["rev"] != "workspace")
    exp = next(rev for e in head["experiments"] or [] for rev in e["revs"] if rev["name"] == "topk3")
    params = exp["data"]["params"]["params.yaml"]["data"]
    assert params["scoring"]["top_k"] == 3 and params["mlflow"]["enabled"] is True
    assert params["model"]["_target_"] == LGBM
    assert exp["data"]["metrics"]["reports/metrics.json"]["data"]["pr_auc"] > 0
    registration = json.loads(git(proj, "show", f"{exp['rev']}:models/registered.json"))
    with sqlite3.connect(proj / "mlruns" / "mlflow.db") as db:
        runs = db.execute("select count(*) from runs where run_uuid = ?", (registration["run_id"],)).fetchone()[0]
        version = db.execute("select count(*) from model_versions where run_id = ?", (registration["run_id"],)).fetchone()[0]
    assert (runs, version) == (1, 1), "the queued experiment's MLflow run is not in the project's store"
    # The workspace is untouched by a queued run, and git does not see MLflow's store.
    assert (proj / "params.yaml").read_text() == params_before
    assert "up to date" in dvc(proj, "status")
    assert git(proj, "status", "--porcelain", "--untracked-files=all") == ""

