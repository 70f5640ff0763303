"""Tasks the command line can run, selected by ``task=<name>``.

Each task is a function of the composed config; the registry maps the ``Task`` enum of
:mod:`aml_pipeline.config` (which lists the allowed values in its errors) to the module
that runs it. ``all`` runs the four stages in order, each reading the previous one's files,
exactly as ``dvc repro`` runs them one by one.
"""

from __future__ import annotations

import importlib

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from aml_pipeline.config import Task
from aml_pipeline.optional import require_extra
from aml_pipeline.sweep import summarise_folder

STAGES = (Task.data, Task.features, Task.train, Task.evaluate)

#: Tasks that cannot run without an extra (pyproject.toml): checked before the task's module
#: loads, so a core install answers with the pip command instead of an ImportError. Engine
#: and option choices inside other tasks (engine=spark, a models:/ bundle) check their own.
TASK_EXTRAS = {
    "serve": "serve",
    "stream": "stream",
    "promote": "mlflow",
    "cases": "workbench",
    "labels": "workbench",
    "workbench": "workbench",
    "users": "workbench",
}


def _module(task: Task):
    extra = TASK_EXTRAS.get(task.value)
    if extra is not None:
        require_extra(extra, why=f"task={task.value}")
    return importlib.import_module(f"aml_pipeline.tasks.{task.value}")


def _all(cfg: DictConfig) -> dict:
    results = {task.value: _module(task).run(cfg) for task in STAGES}
    return results["evaluate"]["metrics"]


def _isolate_multirun_job(cfg: DictConfig) -> None:
    """In a sweep (-m) each job writes under its own output folder, never over another's."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    job_dir = HydraConfig.get().runtime.output_dir
    with open_dict(cfg):
        cfg.paths.data_dir = f"{job_dir}/data"
        cfg.paths.reports_dir = f"{job_dir}/reports"
        cfg.paths.models_dir = f"{job_dir}/models"


def run_task(cfg: DictConfig) -> object:
    task = Task(cfg.task)
    _isolate_multirun_job(cfg)
    if task == Task.all:
        return _all(cfg)
    if task == Task.sweep_summary:
        return summarise_folder(cfg)
    return _module(task).run(cfg)
