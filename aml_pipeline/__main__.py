"""Command line: ``python -m aml_pipeline [task=...] [group=option ...] [key=value ...]``.

Composes ``conf/`` with Hydra, validates it against the typed schemas, then runs the
chosen task. User errors print one line and exit 2; bugs keep their traceback. In a sweep
(``-m``) a job returns its validation PR-AUC, the value Hydra's optimising sweepers maximise.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from aml_pipeline.config import register_configs
from aml_pipeline.errors import UserError
from aml_pipeline.progress import fail
from aml_pipeline.sweep import job_objective
from aml_pipeline.tasks import run_task

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> object:
    try:
        return job_objective(run_task(cfg))  # in a sweep: the validation PR-AUC
    except UserError as exc:
        fail(str(exc), exc.exit_code)


if __name__ == "__main__":
    main()
