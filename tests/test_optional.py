"""The core install without its extras: every task either runs or names the extra it needs.

Each test runs Python in a subprocess whose ``sitecustomize`` makes the packages that extras
bring (pyspark, fastapi, mlflow, confluent_kafka, ...) fail to import exactly as they do when
they are not installed (``ModuleNotFoundError: No module named 'x'``). That is the core
install's view of this environment, with the real command line and task code.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from aml_pipeline.config import Task
from aml_pipeline.optional import EXTRA_MODULES, EXTRAS, MissingExtra, install_hint, require, require_extra
from aml_pipeline.tasks import TASK_EXTRAS
from tests.conftest import ROOT, cli_env

#: Everything an extra installs that the package could import, their own dependencies included.
BLOCKED = sorted(set(EXTRAS) | {"starlette", "py4j", "llvmlite", "psycopg", "multipart", "itsdangerous"})

SITECUSTOMIZE = textwrap.dedent("""
    import importlib.abc
    import sys

    BLOCKED = set({blocked!r})

    class Missing(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, Missing())
""")


def run_core(tmp_path, args: list[str], code: str | None = None) -> subprocess.CompletedProcess:
    """``python -m aml_pipeline ARGS`` (or ``python -c CODE``) with every extra's packages missing."""
    site = tmp_path / "core_site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(blocked=BLOCKED))
    env = {**cli_env(), "PYTHONPATH": f"{site}:{ROOT}"}
    command = [sys.executable, "-c", code] if code is not None else [sys.executable, "-m", "aml_pipeline", *args]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_the_blocker_hides_the_extras_packages(tmp_path):
    res = run_core(tmp_path, [], code="import pyspark")
    assert res.returncode == 1
    assert "ModuleNotFoundError: No module named 'pyspark'" in res.stderr


@pytest.mark.parametrize("args, why, extra", [
    (["task=serve"], "task=serve", "serve"),
    (["task=stream", "deploy=file"], "task=stream", "stream"),
    (["task=promote"], "task=promote", "mlflow"),
    (["task=workbench"], "task=workbench", "workbench"),
    (["task=data", "engine=spark"], "engine=spark", "spark"),
])
def test_a_missing_extra_is_one_line_naming_the_pip_command(tmp_path, args, why, extra):
    res = run_core(tmp_path, args)
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().splitlines() == [f"error: {why} needs the '{extra}' extra: pip install 'aml_pipeline[{extra}]'"]
    assert "Traceback" not in res.stderr


def test_every_task_module_imports_in_the_core_or_names_its_extra(tmp_path):
    """Load each task's module the way ``task=NAME`` does, with every extra missing."""
    code = textwrap.dedent("""
        import json
        from aml_pipeline.config import Task
        from aml_pipeline.optional import MissingExtra
        from aml_pipeline.tasks import _module

        out = {}
        for task in Task:
            if task in (Task.all, Task.sweep_summary):
                continue  # not modules: run_task composes them from the others
            try:
                _module(task)
                out[task.value] = "ok"
            except MissingExtra as exc:
                out[task.value] = str(exc)
        print(json.dumps(out))
    """)
    res = run_core(tmp_path, [], code=code)
    assert res.returncode == 0, res.stderr[-3000:]
    outcome = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(outcome) == {t.value for t in Task} - {"all", "sweep_summary"}
    for task, result in outcome.items():
        extra = TASK_EXTRAS.get(task)
        if extra is None:
            assert result == "ok", f"task={task} does not import in the core: {result}"
        else:
            assert result == f"task={task} needs the '{extra}' extra: {install_hint(extra)}"
    # the quickstart's own stages and the everyday tasks need no extra
    assert {t: outcome[t] for t in ("data", "features", "train", "evaluate", "score", "monitor")} == dict.fromkeys(
        ("data", "features", "train", "evaluate", "score", "monitor"), "ok")


@pytest.mark.slow
def test_the_pipeline_runs_in_the_core_and_says_mlflow_was_not_logged(tmp_path):
    """data -> features -> train -> evaluate with no extra at all: the bundle and the reports
    are written, and one line each says MLflow (the default mlflow.enabled=true) and the plots
    are not installed."""
    res = run_core(tmp_path, ["+experiment=quickstart", "source.n_accounts=800", "source.days=30",
                              "source.laundering_rate=0.02", "model.params.n_estimators=50", "evaluation=fast"])
    assert res.returncode == 0, res.stderr[-3000:]
    notice = [line for line in res.stderr.splitlines() if line.startswith("mlflow.enabled:")]
    assert notice == ["mlflow.enabled: MLflow is not installed, so this run is not logged or registered "
                      "(pip install 'aml_pipeline[mlflow]'; or mlflow.enabled=false)"]
    assert (tmp_path / "models" / "bundle" / "manifest.json").is_file()
    reports = {p.name for p in (tmp_path / "reports").iterdir()}
    assert reports >= {"metrics.json", "summary.md"} and "pr_curve.png" not in reports  # no plots extra: no pictures
    assert [line for line in res.stderr.splitlines() if line.startswith("plots:")] == [
        "plots: matplotlib is not installed, so the reports have no pictures (pip install 'aml_pipeline[plots]')"]
    assert not (tmp_path / "mlruns").exists()
    # a models:/ bundle needs the registry: one line again
    res = run_core(tmp_path, ["task=score", "bundle=models:/aml-scorer@challenger"])
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == (
        "error: the MLflow registry (task=promote, models:/ and runs:/ bundles) needs the 'mlflow' extra: "
        "pip install 'aml_pipeline[mlflow]'")


def test_require_imports_an_installed_module_and_names_the_extra_of_a_missing_one():
    assert require("json", why="x", extra="serve").dumps([1]) == "[1]"
    with pytest.raises(MissingExtra, match=r"^engine=spark needs the 'spark' extra: pip install 'aml_pipeline\[spark\]'$"):
        require("pyspark_not_a_module", why="engine=spark", extra="spark")


def test_a_broken_install_keeps_its_traceback(tmp_path):
    """Only a missing package is the one-line error: a package whose own import fails is a bug
    or a broken install that reinstalling the extra would not fix."""
    pkg = tmp_path / "brokenpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import no_such_dependency_of_brokenpkg\n")
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(ModuleNotFoundError, match="no_such_dependency_of_brokenpkg"):
            require("brokenpkg", why="x", extra="serve")
    finally:
        sys.path.remove(str(tmp_path))


def test_every_extra_named_in_the_code_exists_in_pyproject():
    import tomllib

    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    named = set(EXTRAS.values()) | set(EXTRA_MODULES) | set(TASK_EXTRAS.values())
    assert named <= extras, named - extras
    assert {"spark", "serve", "stream", "dvc", "mlflow", "all", "test"} <= extras
    require_extra("spark", why="the test environment")  # the suite runs with every extra
