"""Tasks the command line can run, selected by ``task=<name>``.

Each task is a function of the composed config; the registry maps the ``Task`` enum of
:mod:`aml_pipeline.config` (which lists the allowed values in its errors) to the function.
"""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig

from aml_pipeline.config import Task
from aml_pipeline.errors import UserError


def _data(cfg: DictConfig):
    from aml_pipeline.tasks.data import run

    return run(cfg)


TASKS: dict[Task, Callable[[DictConfig], object]] = {
    Task.data: _data,
}


def run_task(cfg: DictConfig) -> object:
    task = Task(cfg.task)
    if task not in TASKS:
        raise UserError(f"task={task.value} is not available yet; available: {', '.join(t.value for t in TASKS)}")
    return TASKS[task](cfg)
