"""Model selection in sweeps: jobs are ranked, and searched, by validation PR-AUC only.

- The sweep table on hand-made job folders whose validation and test PR-AUC disagree: the
  ranking follows validation; failed jobs and jobs without a validation number go last.
- The Optuna sweeper with a stand-in launcher (no jobs run): search-space syntax, the
  seeded TPE sampler, failed trials, and the best trial it reports.
- A tiny Optuna sweep as a user runs it (``+hparams_search=lightgbm_optuna``): each job
  returns its validation PR-AUC and the best trial is the job with the best one.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from aml_pipeline.sweep import RANKING_NOTE, job_objective, summarise
from tests.conftest import run_cli

optuna = pytest.importorskip("optuna")

from hydra_plugins.aml_pipeline_optuna.optuna_sweeper import OptunaSweeper, search_space  # noqa: E402


# ----------------------------------------------------------------------------- the table
def fake_job(sweep: Path, name: str, overrides: list[str], valid: float | None, test: float | None) -> None:
    """A job folder as a sweep leaves it: overrides, the bundle's manifest, the test report."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if valid is not None:
        (job / "models" / "bundle").mkdir(parents=True)
        manifest = {"metrics": {"valid_pr_auc": valid, "valid_roc_auc": 0.9, "best_iteration": 10}}
        (job / "models" / "bundle" / "manifest.json").write_text(json.dumps(manifest))
    if test is not None:
        (job / "reports").mkdir(parents=True)
        metrics = {"pr_auc": test, "roc_auc": 0.95, "baseline": {"pr_auc": 0.05},
                   "operating_point": {"precision": 0.5, "recall": 0.6, "f1": 0.55, "alert_rate": 0.01}}
        (job / "reports" / "metrics.json").write_text(json.dumps(metrics))


def test_ranking_follows_validation_not_test(tmp_path):
    # The best test PR-AUC (job 0) has the worst validation PR-AUC: it must not win.
    fake_job(tmp_path, "0", ["model.params.num_leaves=15"], valid=0.50, test=0.90)
    fake_job(tmp_path, "1", ["model.params.num_leaves=31"], valid=0.80, test=0.40)
    fake_job(tmp_path, "2", ["model.params.num_leaves=63"], valid=0.70, test=0.60)
    fake_job(tmp_path, "3", ["model.params.num_leaves=7"], valid=0.99, test=None)  # evaluate failed
    fake_job(tmp_path, "4", ["model.params.num_leaves=3"], valid=None, test=0.95)  # no bundle manifest
    table = summarise(tmp_path)
    assert table["job"].to_list() == ["1", "2", "0", "3", "4"]
    assert table["rank"].to_list() == [1, 2, 3, 4, 5]
    assert table["valid_pr_auc"].to_list()[:3] == [0.80, 0.70, 0.50]
    assert table["test_pr_auc"].to_list()[:3] == [0.40, 0.60, 0.90]  # shown, not used
    assert table["status"].to_list()[3:] == ["failed (no metrics)", "no validation PR-AUC (not ranked)"]
    csv = pl.read_csv(tmp_path / "sweep_summary.csv")
    assert csv["job"].cast(pl.String).to_list() == ["1", "2", "0", "3", "4"]
    md = (tmp_path / "sweep_summary.md").read_text()
    assert RANKING_NOTE in md and "never used to choose" in md
    assert md.index("num_leaves=31") < md.index("num_leaves=63") < md.index("num_leaves=15`")


def test_job_objective_outside_a_sweep_is_the_task_result():
    result = {"pr_auc": 0.9}
    assert job_objective(result) is result


# ----------------------------------------------------------------------------- the sweeper
def test_search_space_syntax():
    space, fixed = search_space(["a=int(interval(8, 64))", "b=tag(log, interval(0.01, 0.3))", "c=interval(0.5, 1.0)",
                                 "d=choice(gbdt,dart)", "e=range(10, 50, 10)", "f=15,31", "g=7"], optuna)
    d = optuna.distributions
    assert space["a"] == d.IntDistribution(8, 64)
    assert space["b"] == d.FloatDistribution(0.01, 0.3, log=True)
    assert space["c"] == d.FloatDistribution(0.5, 1.0)
    assert space["d"] == d.CategoricalDistribution(["gbdt", "dart"])
    assert space["e"] == d.IntDistribution(10, 40, step=10)  # Hydra's range excludes 50
    assert space["f"] == d.CategoricalDistribution([15, 31])
    assert fixed == {"g": "7"}


class StandInLauncher:
    """Runs no job: the return value is a function of the overrides (None = no number, 'boom' = job failed)."""

    def __init__(self, objective):
        self.objective, self.launched = objective, []

    def launch(self, job_overrides, initial_job_idx):
        [overrides] = job_overrides
        params = dict(o.split("=", 1) for o in overrides)
        self.launched.append(params)
        value = self.objective(params)
        if value == "boom":
            return [JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=RuntimeError("boom"))]
        return [JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=value)]


def run_sweeper(tmp_path, objective, n_trials=6, seed=7, params=None):
    params = params or {"x": "interval(0, 1)", "k": "int(interval(1, 5))"}
    sweeper = OptunaSweeper(direction="maximize", n_trials=n_trials, seed=seed, n_startup_trials=3, storage=None,
                            study_name=None, params=OmegaConf.create(params))
    sweeper.launcher = StandInLauncher(objective)
    sweeper.sweep_dir = tmp_path
    sweeper.sweep([])
    return sweeper.launcher.launched, yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())


def test_sweeper_reports_the_trial_with_the_best_value(tmp_path):
    def objective(p):
        return 1.0 - (float(p["x"]) - 0.3) ** 2 - 0.01 * int(p["k"])

    launched, results = run_sweeper(tmp_path / "a", objective)
    values = [objective(p) for p in launched]
    best = max(range(len(values)), key=values.__getitem__)
    assert len(launched) == 6 and results["n_complete"] == 6
    assert results["best_job"] == str(best) and results["best_value"] == values[best]
    assert results["best_params"] == {"x": float(launched[best]["x"]), "k": int(launched[best]["k"])}
    again, _ = run_sweeper(tmp_path / "b", objective)
    assert again == launched  # a fixed seed: the same trials


def test_failed_trials_are_recorded_and_the_search_goes_on(tmp_path):
    calls = iter(["boom", None, float("nan"), 0.2, 0.6, 0.4])
    launched, results = run_sweeper(tmp_path, lambda p: next(calls), params={"x": "interval(0, 1)", "fixed": "3"})
    assert len(launched) == 6 and all(p["fixed"] == "3" for p in launched)
    assert results["n_trials"] == 6 and results["n_complete"] == 3
    assert results["best_job"] == "4" and results["best_value"] == 0.6


def test_all_trials_failing_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="all 2 trials failed"):
        run_sweeper(tmp_path, lambda p: None, n_trials=2)


# ----------------------------------------------------------------------------- end to end
SMALL = ["+experiment=quickstart", "source.n_accounts=800", "source.days=30", "source.laundering_rate=0.02",
         "mlflow.enabled=false", "model.params.n_estimators=100"]


@pytest.mark.slow
def test_optuna_sweep_picks_the_best_validation_pr_auc(tmp_path):
    res = run_cli(["-m", *SMALL, "+hparams_search=lightgbm_optuna", "hydra.sweeper.n_trials=3",
                   "hydra.sweeper.n_startup_trials=2", "hydra.sweep.dir=multirun/optuna"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    sweep = tmp_path / "multirun/optuna"
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    valid = {j.name: json.loads((j / "models/bundle/manifest.json").read_text())["metrics"]["valid_pr_auc"]
             for j in sweep.iterdir() if (j / ".hydra").is_dir()}
    test = {j: json.loads((sweep / j / "reports/metrics.json").read_text())["pr_auc"] for j in valid}
    assert len(valid) == 3 and results["n_complete"] == 3
    best = max(valid, key=valid.get)
    assert results["best_job"] == best and results["best_value"] == valid[best]  # the objective is validation
    table = pl.read_csv(sweep / "sweep_summary.csv")
    assert str(table["job"][0]) == best and table["valid_pr_auc"][0] == pytest.approx(valid[best])
    assert table["test_pr_auc"].to_list() == pytest.approx([test[str(j)] for j in table["job"]])
    # every trial searched the four LightGBM parameters, each job's overrides say which values
    overrides = yaml.safe_load((sweep / best / ".hydra/overrides.yaml").read_text())
    for key in results["best_params"]:
        assert f"{key}={results['best_params'][key]}" in overrides
