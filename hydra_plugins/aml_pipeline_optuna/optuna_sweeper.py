"""Bayesian search for a multirun: Optuna's TPE sampler driving Hydra's launcher.

Each trial is one Hydra job; the sweeper reads the job's return value (the task function's
return value; aml_pipeline's is the job's validation PR-AUC) and tells it to the study, so
the next trial's parameters come from the results so far. Trials run one at a time.

Why not the ``hydra-optuna-sweeper`` package: its last release for hydra-core 1.3 (1.3.0)
requires ``optuna>=2.10,<3``. Optuna 2.10 (2021) runs in memory beside SQLAlchemy 2, but its
study storage fails on SQLAlchemy 2 (which MLflow's alembic requires), and its next release
requires hydra-core 1.4. This sweeper takes the same settings and search-space syntax, on a
current Optuna.

Settings (``hydra.sweeper.*``): ``direction`` (maximize/minimize), ``n_trials``, ``seed``
(the TPE sampler's: the same seed and results give the same trials), ``n_startup_trials``
(random trials before TPE models the results), ``storage`` (an Optuna storage URL, e.g.
``sqlite:///optuna.db``, to keep or resume a study; default in memory), ``study_name`` and
``params``, the search space in Hydra's sweep syntax:

- ``interval(0.5, 1.0)``: a float; ``int(interval(8, 64))``: an integer;
  ``tag(log, interval(0.01, 0.3))``: sampled on a log scale;
- ``range(10, 100, 10)``: integers (or floats) on a grid; ``choice(a, b)`` or ``a,b``: one of;
- a plain value: fixed for every trial.

A trial whose job fails or returns no number (``None``, NaN) is recorded as failed and the
search goes on. At the end ``optimization_results.yaml`` in the sweep folder names the best
trial, its job folder, parameters and value.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from aml_pipeline.optional import MissingExtra, require
from aml_pipeline.progress import fail

log = logging.getLogger(__name__)


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.aml_pipeline_optuna.optuna_sweeper.OptunaSweeper"
    direction: str = "maximize"
    n_trials: int = 8
    seed: Optional[int] = 42
    n_startup_trials: int = 4
    storage: Optional[str] = None
    study_name: Optional[str] = None
    params: dict[str, str] = field(default_factory=dict)


def register() -> None:
    ConfigStore.instance().store(group="hydra/sweeper", name="aml_optuna", node=OptunaSweeperConf, provider="aml_pipeline")


def _optuna():
    """The one place Optuna is imported (an optional dependency)."""
    try:
        return require("optuna", why="the Optuna sweeper (+hparams_search=lightgbm_optuna)")
    except MissingExtra as exc:
        fail(str(exc))  # one line and exit 2: Hydra reports a sweeper's own errors with a traceback


def distribution(override: Override, optuna) -> Any:
    """An Optuna distribution for a sweep override, or the plain value of a fixed one."""
    d = optuna.distributions
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return d.IntDistribution(value.start, value.end, log=log_scale)
        return d.FloatDistribution(float(value.start), float(value.end), log=log_scale)
    if isinstance(value, RangeSweep) and not value.shuffle:
        if all(isinstance(x, int) for x in (value.start, value.stop, value.step)):
            # Hydra's range excludes stop; Optuna's high is included.
            high = value.start + (len(range(value.start, value.stop, value.step)) - 1) * value.step
            return d.IntDistribution(value.start, high, step=value.step)
        n = math.ceil((value.stop - value.start) / value.step)
        return d.FloatDistribution(value.start, value.start + (n - 1) * value.step, step=value.step)
    if isinstance(value, (ChoiceSweep, RangeSweep)):
        return d.CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    raise ValueError(f"{override.input_line}: the Optuna sweeper takes interval(), range(), choice() or a list")


def search_space(arguments: list[str], optuna) -> tuple[dict[str, Any], dict[str, str]]:
    """(distributions, fixed values) of ``key=value`` sweep arguments."""
    space, fixed = {}, {}
    for override in OverridesParser.create().parse_overrides(arguments):
        value = distribution(override, optuna)
        if isinstance(value, optuna.distributions.BaseDistribution):
            space[override.get_key_element()] = value
        else:
            fixed[override.get_key_element()] = value
    return space, fixed


def _number(ret: Any) -> float | None:
    """The job's return value as a finite float, or None (the job failed or returned no number)."""
    try:
        value = float(ret.return_value)
    except Exception as exc:  # noqa: BLE001 - a failed job re-raises its exception here
        log.warning(f"trial failed: {type(exc).__name__}: {exc}")
        return None
    return value if math.isfinite(value) else None


class OptunaSweeper(Sweeper):
    def __init__(self, direction: str, n_trials: int, seed: Optional[int], n_startup_trials: int,
                 storage: Optional[str], study_name: Optional[str], params: Optional[DictConfig]) -> None:
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"hydra.sweeper.direction: {direction!r}; use maximize or minimize")
        if n_trials < 1:
            raise ValueError("hydra.sweeper.n_trials must be >= 1")
        self.direction, self.n_trials, self.seed = direction, n_trials, seed
        self.n_startup_trials, self.storage, self.study_name = n_startup_trials, storage, study_name
        self.params = OmegaConf.to_container(params) if params else {}
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)
        self.sweep_dir = Path(config.hydra.sweep.dir)

    def sweep(self, arguments: list[str]) -> list[Any]:
        optuna = _optuna()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial, below
        space, fixed = search_space([f"{k}={v}" for k, v in self.params.items()] + list(arguments), optuna)
        for key in fixed:
            space.pop(key, None)  # a command-line value fixes a searched parameter
        sampler = optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=self.n_startup_trials)
        study = optuna.create_study(study_name=self.study_name, storage=self.storage, sampler=sampler,
                                    direction=self.direction, load_if_exists=True)
        log.info(f"Optuna: {self.n_trials} trials, TPE (seed {self.seed}), {self.direction}; "
                 f"searching {', '.join(space) or 'nothing'}")
        jobs: dict[int, int] = {}  # trial number -> job number
        returns = []
        for _ in range(self.n_trials):
            trial = study.ask(space)
            overrides = tuple(f"{k}={v}" for k, v in {**trial.params, **fixed}.items())
            [ret] = self.launcher.launch([overrides], initial_job_idx=self.job_idx)
            jobs[trial.number] = self.job_idx
            self.job_idx += 1
            returns.append(ret)
            value = _number(ret)
            if value is None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            study.tell(trial, value)
            log.info(f"trial {trial.number} (job {jobs[trial.number]}): {value:.6g}, best so far {study.best_value:.6g}")
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not done:
            raise RuntimeError(f"all {self.n_trials} trials failed or returned no number; see the job logs in {self.sweep_dir}")
        best = study.best_trial
        results = {"name": "optuna", "direction": self.direction, "sampler": f"TPE (seed {self.seed})",
                   "n_trials": len(study.trials), "n_complete": len(done), "best_trial": best.number,
                   "best_job": str(jobs.get(best.number, "")) or None, "best_params": dict(best.params),
                   "best_value": best.value}
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), self.sweep_dir / "optimization_results.yaml")
        log.info(f"best: trial {best.number} (job {results['best_job']}) {best.value:.6g} with {best.params}")
        return returns
