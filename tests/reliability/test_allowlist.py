"""No config can run code: every ``_target_`` anywhere resolves to a registered class, or the run
stops before anything is built, with one line naming the key and the allowed targets."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from aml_pipeline.build import REGISTRY, build, check_targets
from aml_pipeline.errors import ConfigError
from tests.conftest import CONF, ROOT, run_cli

#: Probes a copied config could carry; each one printed or ran something before.
BYPASSES = {
    "nested in model.params": (["+model.params.evil={_target_:builtins.print,_args_:[PWNED]}"], "model",
                               "model.params.evil._target_"),
    "prefix-passing module attribute": (["model._target_=aml_pipeline.serving.server.os.system"], "model", "model._target_"),
    "foreign function": (["model._target_=os.system"], "model", "model._target_"),
    "in a list": (["source=csv", "source.path=x.csv", "+source.columns=[{_target_:builtins.print,_args_:[PWNED]}]"],
                  "source", "source.columns[0]._target_"),
    "nested in source.columns": (["source=csv", "source.path=x.csv",
                                  "+source.columns={event_time:{_target_:builtins.print,_args_:[PWNED]}}"],
                                 "source", "source.columns.event_time._target_"),
    "numpy through a module attribute": (["weighting._target_=aml_pipeline.models.weighting.np.save"], "weighting",
                                         "weighting._target_"),
    "a registered module's base class": (["model._target_=aml_pipeline.models.classifiers.Classifier"], "model",
                                         "model._target_"),
}


@pytest.mark.parametrize("name", list(BYPASSES))
def test_bypass_refused_with_key_named(compose_cfg, capsys, name):
    overrides, group, key = BYPASSES[name]
    cfg = compose_cfg(overrides)
    for check in (lambda: check_targets(cfg), lambda: build(cfg[group], group)):
        with pytest.raises(ConfigError) as exc:
            check()
        message = str(exc.value)
        assert message.startswith(key + "=") and "\n" not in message
        assert f"{group}._target_" in message or "allowed for" in message
        for module, qualname in REGISTRY[group][:1]:
            assert f"{module}.{qualname}" in message  # the allowed targets are listed
    assert "PWNED" not in capsys.readouterr().out  # nothing was called


def test_nested_target_is_never_instantiated_even_if_registered(compose_cfg):
    cfg = compose_cfg(["+model.params.w={_target_:aml_pipeline.models.weighting.NoWeighting}"])
    with pytest.raises(ConfigError, match=r"^model\.params\.w\._target_=.*nested _target_ keys are never built"):
        build(cfg.model, "model")


def test_interpolated_node_is_checked_too(compose_cfg):
    """``oc.create`` makes a node from a string only when resolved: the walk resolves it."""
    cfg = compose_cfg([])
    OmegaConf.set_struct(cfg, False)
    cfg.model.params.evil = "${oc.create:'{_target_: builtins.print}'}"
    with pytest.raises(ConfigError, match=r"^model\.params\.evil\._target_="):
        check_targets(cfg)


def test_registry_is_checked_by_resolved_object_not_string(compose_cfg):
    cfg = compose_cfg([])
    cfg.model._target_ = "aml_pipeline.models.classifiers.np.save"  # a string under the package
    with pytest.raises(ConfigError, match=r"it is numpy\.save"):
        build(cfg.model, "model")


def test_every_shipped_option_and_experiment_passes_the_walk(compose_cfg):
    groups = {p.name: sorted(x.stem for x in p.glob("*.yaml")) for p in CONF.iterdir() if p.is_dir()}
    checked = 0
    for group, options in groups.items():
        if group in ("hydra",):
            continue
        for option in options:
            if group in ("experiment", "hparams_search"):
                overrides = [f"+{group}={option}"]
            else:
                overrides = [f"{group}={option}"] + (["source.path=x"] if group == "source" and option != "synthetic" else [])
            cfg = compose_cfg(overrides)
            assert set(check_targets(cfg)) == {"source._target_", "model._target_", "weighting._target_",
                                               "engine._target_"}, (group, option)
            checked += 1
    for group in ("source", "model", "weighting", "engine"):
        for option in groups[group]:
            extra = ["source.path=x"] if group == "source" and option != "synthetic" else []
            assert build(compose_cfg([f"{group}={option}", *extra])[group], group) is not None
    assert checked >= 30


def test_partial_and_missing_values(compose_cfg):
    import functools

    cfg = compose_cfg(["weighting=fixed_positive", "+weighting._partial_=true"])
    assert isinstance(build(cfg.weighting, "weighting"), functools.partial)
    cfg = compose_cfg(["source=paysim"])  # source.path is ??? : named, not passed on as None
    with pytest.raises(ConfigError, match=r"source.*path"):
        build(cfg.source, "source")


@pytest.mark.parametrize("override", [
    "+model.params.evil={_target_:builtins.print,_args_:[PWNED]}",
    "model._target_=aml_pipeline.serving.server.os.system",
    "+source.junk=[{_target_:builtins.print,_args_:[PWNED]}]",
    "+hydra.callbacks.evil={_target_:builtins.print,_args_:[PWNED]}",  # built by Hydra before the job
])
def test_cli_refuses_in_one_line_before_any_work(tmp_path, override):
    r = run_cli(["task=data", f"paths.data_dir={tmp_path / 'data'}", override], cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
    assert "_target_=" in lines[0] and "allowed" in lines[0]
    assert "PWNED" not in r.stdout + r.stderr
    assert not (tmp_path / "data").exists()  # refused before the task read or wrote anything


def test_docs_example_is_what_the_command_prints(compose_cfg):
    doc = (ROOT / "docs" / "reliability.md").read_text()
    cfg = compose_cfg(["model._target_=aml_pipeline.serving.server.os.system"])
    with pytest.raises(ConfigError) as exc:
        check_targets(cfg)
    shown = next(line for line in doc.splitlines() if line.startswith("error: model._target_="))
    assert f"error: {exc.value}".startswith(shown.removesuffix(", ..."))
