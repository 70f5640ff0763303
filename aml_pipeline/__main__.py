"""Command line: ``aml-pipeline`` or ``python -m aml_pipeline [task=...] [group=option ...] [key=value ...]``.

Composes ``conf/`` with Hydra, validates it against the typed schemas, then runs the
chosen task. User errors print one line and exit 2; bugs keep their traceback. In a sweep
(``-m``) a job returns its validation PR-AUC, the value Hydra's optimising sweepers maximise.

Before anything is built, every ``_target_`` of the composed config (``hydra.callbacks``
included, which Hydra instantiates before the job starts) is checked against the registry
in :mod:`aml_pipeline.build`. The copies of the config Hydra writes (``.hydra/*.yaml``,
``multirun.yaml``) and a sweep's log lines repeat the command line, so the run's secret
values are masked in them (:mod:`aml_pipeline.secrets`).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import hydra
from hydra._internal import callbacks as hydra_callbacks
from hydra._internal import utils as hydra_utils
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from omegaconf import DictConfig

from aml_pipeline import CONF_DIR as PACKAGE_CONF
from aml_pipeline.build import check_targets
from aml_pipeline.config import register_configs
from aml_pipeline.errors import UserError
from aml_pipeline.progress import fail
from aml_pipeline.secrets import config_container, scrub, secret_values
from aml_pipeline.sweep import job_objective
from aml_pipeline.tasks import run_task

register_configs()


def _check_before_hydra_callbacks() -> None:
    """Hydra builds ``hydra.callbacks`` from the composed config before our job runs: check
    the whole config first, so a copied config cannot run code through them either."""
    original = hydra_callbacks.Callbacks.__init__
    if getattr(original, "checked_targets", False):
        return

    @functools.wraps(original)
    def checked(self, config=None, *args, **kwargs):
        if config is not None:
            try:
                check_targets(config)
            except UserError as exc:
                fail(str(exc), exc.exit_code)  # SystemExit passes through Hydra's error report
            _mask_log_lines(config)  # a sweep's launcher logs each job's overrides
        original(self, config, *args, **kwargs)

    checked.checked_targets = True
    hydra_callbacks.Callbacks.__init__ = checked


def config_error_line(exc: BaseException) -> str:
    """Hydra's report of a wrong override or option as one line: its message and the
    OmegaConf cause (an enum's allowed values, a key's schema), the ``full_key`` kept, a list
    of available options joined with commas."""
    text = str(exc)
    cause = exc.__cause__
    if cause is not None and str(cause).strip() and str(cause).strip() not in text:
        text = f"{text}: {cause}"
    lines = [line.strip() for line in text.split("Config search path:")[0].splitlines() if line.strip()]
    key = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("full_key:")), None)
    parts: list[str] = []
    for line in lines:
        if line.startswith(("full_key:", "object_type=", "reference_type=", "Set the environment variable")):
            continue
        if parts and parts[-1].endswith(":") and not line.startswith("base_"):
            parts[-1] = f"{parts[-1]} {line}"
        elif parts and parts[-1].startswith("Available options"):
            if not line.startswith("base_"):  # the typed schemas, not options
                parts[-1] = f"{parts[-1]}, {line}"
        else:
            parts.append(line)
    out = "; ".join(parts)
    return f"{out} (key {key})" if key and key not in out else out


def _one_line_config_errors() -> None:
    """Hydra reports a wrong override or option (an enum value, an unknown key or option)
    itself, before our job runs, over four or more lines; every other error a user can fix
    is one line. Its report function is wrapped so these print as one line and exit 2;
    ``HYDRA_FULL_ERROR=1`` still gives Hydra's full report."""
    original = hydra_utils.run_and_report
    if getattr(original, "one_line", False):
        return

    @functools.wraps(original)
    def run_and_report(func):
        def checked():
            try:
                return func()
            except CompactHydraException as exc:
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                fail(config_error_line(exc), 2)  # SystemExit passes through Hydra's report

        return original(checked)

    run_and_report.one_line = True
    hydra_utils.run_and_report = run_and_report


def _mask_log_lines(cfg: DictConfig) -> None:
    """Mask the run's secret values in every log record from now on (a record factory outlives
    the logging reconfigurations Hydra does per launcher and per job)."""
    values = secret_values(config_container(cfg))
    factory = logging.getLogRecordFactory()
    known = getattr(factory, "masked_values", None)
    if not values or (known is not None and values <= known):
        return
    base = getattr(factory, "unmasked", factory)
    values = values | (known or set())

    def masking(*args, **kwargs) -> logging.LogRecord:
        record = base(*args, **kwargs)
        try:
            text = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler's own error path
            return record
        masked = scrub(text, values)
        if masked != text:
            record.msg, record.args = masked, None
        return record

    masking.masked_values, masking.unmasked = values, base
    logging.setLogRecordFactory(masking)


def _mask_hydra_copies(cfg: DictConfig) -> None:
    """Mask the run's secrets in the config copies Hydra wrote for this job (and the sweep)."""
    values = secret_values(config_container(cfg))
    if not values:
        return
    hc = HydraConfig.get()
    files: list[Path] = []
    if hc.output_subdir is not None:
        files += sorted((Path(hc.runtime.output_dir) / hc.output_subdir).glob("*.yaml"))
    files.append(Path(hc.sweep.dir) / "multirun.yaml")
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        masked = scrub(text, values)
        if masked != text:
            path.write_text(masked)


CONF_DIR = str(PACKAGE_CONF)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> object:
    try:
        _mask_hydra_copies(cfg)
        _mask_log_lines(cfg)
        check_targets(cfg)  # every _target_, nested ones included, before anything is built
        return job_objective(run_task(cfg))  # in a sweep: the validation PR-AUC
    except UserError as exc:
        fail(str(exc), exc.exit_code)


def cli() -> None:
    """The ``aml-pipeline`` console command: the same as ``python -m aml_pipeline``."""
    _check_before_hydra_callbacks()
    _one_line_config_errors()
    main()


if __name__ == "__main__":
    cli()
