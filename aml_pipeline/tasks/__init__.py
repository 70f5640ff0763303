"""Tasks the command line can run, selected by ``task=<name>``.

Each task is a function of the composed config; the registry maps the ``Task`` enum of
:mod:`aml_pipeline.config` (which lists the allowed values in its errors) to the module
that runs it. ``all`` runs the four stages in order, each reading the previous one's files,
exactly as ``dvc repro`` runs them one by one.
"""

from __future__ import annotations

import importlib

from omegaconf import DictConfig, open_dict

from aml_pipeline.config import Task

STAGES = (Task.data, Task.features, Task.train, Task.evaluate)


def _module(task: Task):
    return importlib.import_module(f"aml_pipeline.tasks.{task.value}")


def _all(cfg: DictConfig) -> dict:
    results = {task.value: _module(task).run(cfg) for task in STAGES}
    return results["evaluate"]["metrics"]


def _isolate_multirun_job(cfg: DictConfig) -> None:
    """In a sweep (-m) each job writes under its own output folder, never over another's."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

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
        from aml_pipeline.sweep import summarise_folder

        return summarise_folder(cfg)
    return _module(task).run(cfg)
