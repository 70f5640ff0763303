"""The packages that extras bring, and the one place that imports them on a core code path.

``pip install aml_pipeline`` (the core) runs the quickstart on the polars engine; Spark, the
online service, Kafka, MLflow, DVC, Optuna, the exports and the workbench are extras
(docs/install.md). Without this module a missing extra surfaces as an ``ImportError``
traceback from deep inside a task. Instead, the first place a task reaches for such a
package calls :func:`require`, and a missing one is a :class:`MissingExtra`, which the
command line prints as one line naming the ``pip install`` to run, e.g.::

    task=serve needs the 'serve' extra: pip install 'aml_pipeline[serve]'

Modules that only run once such a check has passed (everything under ``spark/``, the
Kafka connector, the service's app) import their package at the top as usual.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from aml_pipeline.errors import UserError

#: Top-level module -> the extra that installs it (pyproject.toml, [project.optional-dependencies]).
EXTRAS = {
    "pyspark": "spark",
    "pyarrow": "spark",
    "fastapi": "serve",
    "uvicorn": "serve",
    "httptools": "serve",
    "uvloop": "serve",
    "redis": "serve",
    "prometheus_client": "serve",
    "orjson": "serve",
    "confluent_kafka": "stream",
    "mlflow": "mlflow",
    "pandas": "mlflow",
    "dvc": "dvc",
    "optuna": "tune",
    "onnx": "export",
    "onnxruntime": "export",
    "lleaves": "export",
    "treelite": "export",
    "sqlalchemy": "workbench",
    "alembic": "workbench",
    "jinja2": "workbench",
    "matplotlib": "plots",
}


#: Extra -> the modules without which its part cannot start (the rest have fallbacks or are
#: checked where they are used, e.g. redis only for deploy.store.backend=redis).
EXTRA_MODULES = {
    "spark": ("pyspark", "pyarrow"),
    "serve": ("fastapi", "uvicorn", "orjson"),
    "stream": ("pyspark", "pyarrow", "confluent_kafka", "orjson"),
    "mlflow": ("mlflow", "pandas"),
    "tune": ("optuna",),
    "workbench": ("sqlalchemy", "alembic", "jinja2", "fastapi", "uvicorn"),
}


class MissingExtra(UserError):
    """A package that an extra installs is missing: the message names the pip command."""


def install_hint(extra: str) -> str:
    return f"pip install 'aml_pipeline[{extra}]'"


def require(module: str, why: str, extra: str | None = None) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtra` saying that ``why`` (what the user
    asked for, e.g. ``task=serve`` or ``engine=spark``) needs its extra.

    Only a missing package becomes the one-line error: an installed package that fails to
    import (a broken build, a wrong version) keeps its traceback, since reinstalling the
    extra would not fix it.
    """
    top = module.split(".", 1)[0]
    extra = extra or EXTRAS[top]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".", 1)[0] != top:
            raise
        raise MissingExtra(f"{why} needs the '{extra}' extra: {install_hint(extra)}") from None


def require_extra(extra: str, why: str) -> None:
    """Check that ``extra``'s essential modules import (see :data:`EXTRA_MODULES`)."""
    for module in EXTRA_MODULES[extra]:
        require(module, why, extra=extra)


def installed(module: str) -> bool:
    """Whether ``module`` imports (for features that are skipped, with a notice, without it)."""
    try:
        require(module, why=module)
    except MissingExtra:
        return False
    return True
