"""Build components from config, safely and with readable errors.

Hydra's ``instantiate`` runs whatever ``_target_`` names, so we only instantiate targets
inside ``aml_pipeline.*`` (config is code-adjacent, but a copied config should not be able
to import arbitrary modules). Failures are re-raised as one line naming the config group
and option file instead of Hydra's nested traceback.
"""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from aml_pipeline.errors import ConfigError

ALLOWED_PREFIX = "aml_pipeline."


def build(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """Instantiate the config node at ``key`` (e.g. ``source``), refusing foreign targets."""
    target = OmegaConf.select(node, "_target_", default=None)
    where = f"{key} (conf/{key}/<option>.yaml)"
    if not target:
        raise ConfigError(f"{where} has no _target_")
    if not str(target).startswith(ALLOWED_PREFIX):
        raise ConfigError(f"{key}._target_={target!r} is outside {ALLOWED_PREFIX}*; only the project's own classes can be built from config")
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        if isinstance(cause, ConfigError):
            raise cause from None
        msg = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
        raise ConfigError(f"cannot build {where} from {target}: {msg}") from None
