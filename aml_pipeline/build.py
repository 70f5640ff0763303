"""Build components from config, only from an explicit registry, with readable errors.

Hydra's ``instantiate`` runs whatever ``_target_`` names, and a prefix check on the string
is no guard (``aml_pipeline.serving.server.os.system`` starts with ``aml_pipeline.``). So:

- :data:`REGISTRY` lists, per place where config may name a class, the classes allowed
  there, as the (module, qualified name) the target must *resolve to*;
- :func:`check_targets` walks a whole composed config (every dict and list, interpolations
  resolved) and refuses any ``_target_`` that is not at one of those places or does not
  resolve to a registered object; a nested ``_target_`` (inside ``model.params``,
  ``source.columns``, a list) is always refused: nothing nested is ever built;
- :func:`build` checks its node the same way, then calls the checked object itself with the
  node's values as plain data (no recursive instantiation, no second look-up of the string).

Resolving a target imports only ``aml_pipeline`` modules (a target outside the package is
refused before any import). Every refusal is a :class:`ConfigError`: one line naming the
full key and the allowed targets, which the command line prints without a traceback.
Hydra's own plugins (``hydra.launcher``, ``hydra.sweeper``) are vetted by Hydra, which only
instantiates plugin classes it discovered; ``hydra.callbacks`` are ours and checked here.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from aml_pipeline.config import option_value
from aml_pipeline.errors import ConfigError, UserError
from aml_pipeline.optional import EXTRAS, MissingExtra, install_hint

PACKAGE = "aml_pipeline"
TARGET = "_target_"
#: Keys of a buildable node that are instructions, not constructor arguments.
SPECIAL = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_")
#: Keys of a group's config that the task reads itself, never passed to the built class
#: (``source.labels``: a labels file applied to whatever source is chosen).
TASK_KEYS = {"source": ("labels", "labels_as_of")}

#: Where config may name something to build -> what it may name there, as
#: (defining module, qualified name) of the object the target resolves to.
REGISTRY: dict[str, tuple[tuple[str, str], ...]] = {
    "source": (
        ("aml_pipeline.sources.synthetic", "SyntheticSource"),
        ("aml_pipeline.sources.paysim", "PaySimSource"),
        ("aml_pipeline.sources.amlsim", "AmlSimSource"),
        ("aml_pipeline.sources.amlworld", "AmlWorldSource"),
        ("aml_pipeline.sources.tabular", "TabularSource"),
    ),
    "model": (
        ("aml_pipeline.models.classifiers", "LightGBMClassifier"),
        ("aml_pipeline.models.classifiers", "HistGradientBoostingClassifier"),
        ("aml_pipeline.models.classifiers", "LogisticRegressionClassifier"),
        ("aml_pipeline.models.classifiers", "RandomForestClassifier"),
        ("aml_pipeline.spark.mllib", "SparkGBTClassifier"),
        ("aml_pipeline.spark.mllib", "SparkRandomForestClassifier"),
        ("aml_pipeline.spark.mllib", "SparkLogisticRegression"),
    ),
    "weighting": (
        ("aml_pipeline.models.weighting", "NoWeighting"),
        ("aml_pipeline.models.weighting", "InverseFrequency"),
        ("aml_pipeline.models.weighting", "SqrtInverseFrequency"),
        ("aml_pipeline.models.weighting", "FixedPositive"),
    ),
    "engine": (
        ("aml_pipeline.engines.polars", "PolarsEngine"),
        ("aml_pipeline.spark.engine", "SparkEngine"),
    ),
    # every entry of hydra.callbacks (Hydra instantiates them before the job starts)
    "hydra.callbacks": (("aml_pipeline.sweep", "SweepSummary"),),
}

#: Nodes whose own _target_ Hydra vets (plugin classes it discovered); nested ones are still refused.
HYDRA_PLUGINS = (("hydra", "launcher"), ("hydra", "sweeper"))


def allowed(group: str) -> str:
    return ", ".join(f"{m}.{q}" for m, q in REGISTRY[group])


def slot(path: tuple) -> str | None:
    """The registry group of the node at ``path`` if config may build something there."""
    if len(path) == 1 and path[0] in REGISTRY:
        return str(path[0])
    if len(path) == 3 and path[:2] == ("hydra", "callbacks"):
        return "hydra.callbacks"
    return None


def _key(path: tuple) -> str:
    text = ""
    for p in path:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else str(p))
    return text


def _resolve(target: str) -> Any:
    """The object ``target`` names, importing only modules of this package."""
    parts = target.split(".")
    if len(parts) < 2 or parts[0] != PACKAGE or not all(parts):
        raise LookupError(f"outside {PACKAGE}")
    obj: Any = importlib.import_module(PACKAGE)
    for i in range(1, len(parts)):
        try:
            obj = getattr(obj, parts[i])
            continue
        except AttributeError:
            pass
        if not isinstance(obj, ModuleType) or obj.__name__ != ".".join(parts[:i]):
            raise LookupError(f"{'.'.join(parts[:i + 1])} does not exist")
        try:
            obj = importlib.import_module(".".join(parts[:i + 1]))
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(".".join(parts[:i + 1])):
                raise LookupError(f"{'.'.join(parts[:i + 1])} does not exist") from None
            raise  # a dependency of our module is missing: say which (see build)
    return obj


def _option(node: Any) -> str | None:
    """The config node's ``name`` as text (``spark`` of ``engine=spark``), if it has one."""
    name = node.get("name") if OmegaConf.is_dict(node) or isinstance(node, dict) else None
    return option_value(name)


def check_target(target: Any, path: tuple, node: Any = None) -> Any:
    """The registered object ``target`` resolves to, or ConfigError naming the key and the allowed targets.

    ``node``: the config node holding the target; its ``name`` (``engine=spark``) makes the one
    line that names the extra to install when the target needs a package an extra brings."""
    group = slot(path)
    key = _key((*path, TARGET))
    if group is None:
        where = ", ".join(f"{g}{'.<name>' if g == 'hydra.callbacks' else ''}._target_" for g in REGISTRY)
        near = f"; allowed at {path[0]}._target_: {allowed(str(path[0]))}" if path and path[0] in REGISTRY else ""
        raise ConfigError(f"{key}={target!r}: nested _target_ keys are never built (config builds only {where}{near})")
    refusal = f"{key}={target!r} is not an allowed target; allowed for {group}: {allowed(group)}"
    if not isinstance(target, str):
        raise ConfigError(refusal)
    try:
        obj = _resolve(target.strip())
    except LookupError as exc:
        raise ConfigError(f"{key}={target!r} is not an allowed target ({exc}); allowed for {group}: {allowed(group)}") from None
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc).splitlines()[0]
        extra = EXTRAS.get(str(missing).split(".", 1)[0])
        if extra is not None:
            option = _option(node)
            why = f"{path[0]}={option}" if option else key
            raise MissingExtra(f"{why} needs the '{extra}' extra: {install_hint(extra)}") from None
        raise ConfigError(f"{key}={target!r} (conf/{group}/<option>.yaml) needs the package {missing!r}, which is not installed") from None
    found = (getattr(obj, "__module__", None), getattr(obj, "__qualname__", None))
    if found not in REGISTRY[group]:
        raise ConfigError(f"{key}={target!r} is not an allowed target (it is {found[0]}.{found[1]}); "
                          f"allowed for {group}: {allowed(group)}")
    return obj


def _children(node: Any) -> Iterator[tuple[Any, Any]]:
    if OmegaConf.is_dict(node) or isinstance(node, dict):
        keys = list(node.keys())
    elif OmegaConf.is_list(node) or isinstance(node, (list, tuple)):
        keys = range(len(node))
    else:
        return
    for k in keys:
        try:
            value = node[k]  # resolves interpolations (oc.create can make a node from a string)
        except Exception:  # missing (???) or unresolvable here: nothing to build from it
            value = None
        yield k, value


def check_targets(cfg: Any, base: tuple = ()) -> list[str]:
    """Check every ``_target_`` in ``cfg`` (whose root is at ``base``); returns the checked keys."""
    seen: list[str] = []

    def walk(node: Any, path: tuple) -> None:
        for k, value in _children(node):
            if k == TARGET:
                if path not in HYDRA_PLUGINS:
                    check_target(value, path, node)
                    seen.append(_key((*path, TARGET)))
            else:
                walk(value, (*path, k))

    walk(cfg, tuple(base))
    return seen


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def build(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """Build the config node at ``key`` (``source``, ``model``, ``weighting``) from the registry only."""
    where = f"{key} (conf/{key}/<option>.yaml)"
    if key not in REGISTRY:
        raise ConfigError(f"{key}: nothing is built from this config group; buildable: {', '.join(REGISTRY)}")
    target = OmegaConf.select(node, TARGET, default=None) if OmegaConf.is_config(node) else (node or {}).get(TARGET)
    if not target:
        raise ConfigError(f"{where} has no _target_; allowed for {key}: {allowed(key)}")
    check_targets(node, (key,))  # the node's own target and no nested one, before anything is built
    obj = check_target(target, (key,), node)
    try:
        args = list(_plain(node.get("_args_")) or [])
        params = {str(k): _plain(node[k]) for k in node.keys() if k not in SPECIAL and k not in TASK_KEYS.get(key, ())}
        params.update(kwargs)
        if node.get("_partial_", False):
            return functools.partial(obj, *args, **params)
        return obj(*args, **params)
    except UserError:
        raise
    except MissingMandatoryValue as exc:
        raise ConfigError(f"{exc.full_key or key} has no value (???): set it on the command line or in "
                          f"conf/{key}/<option>.yaml") from None
    except Exception as exc:
        text = str(exc).strip()
        msg = text.splitlines()[0] if text else type(exc).__name__
        raise ConfigError(f"cannot build {where} from {target}: {msg}") from None
