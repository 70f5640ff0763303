"""Portable exports (task=export) of a small-run bundle: parity, manifest, tampering, serving.

Each format's library is optional (the ``[export]`` extra); a format whose library is
missing is skipped, not passed. Parity is the export's own promise: every validation-window
score within 1e-6 of LightGBM's, checked here again on the test window the export never saw.
"""

from __future__ import annotations

import asyncio

import json
import shutil
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from aml_pipeline.bundle import ModelBundle, feature_matrix
from aml_pipeline.errors import UserError
from aml_pipeline.export.bundle_export import exported_model
from aml_pipeline.tasks import run_task
from tests.conftest import SMALL_RUN, compose_config, train_small_run

LIBRARIES = {"onnx": ("onnx", "onnxruntime"), "lleaves": ("lleaves",), "treelite": ("treelite",)}


def need(fmt: str) -> None:
    for module in LIBRARIES[fmt]:
        pytest.importorskip(module)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    paths, test_start_text, test_start = train_small_run(root)
    feats = pl.read_parquet(root / "data/features/features.parquet")
    return SimpleNamespace(root=root, paths=paths, bundle=root / "models/bundle", test_start=test_start,
                           test=feats.filter(pl.col("split") == "test"), valid=feats.filter(pl.col("split") == "valid"))


def export(run, fmt: str, *extra: str) -> dict:
    return run_task(compose_config([*SMALL_RUN, *run.paths, "task=export", f"export.format={fmt}", *extra]))


@pytest.mark.parametrize("fmt", ["onnx", "lleaves", "treelite"])
def test_export_matches_native_scores_and_is_hashed_in_the_manifest(run, fmt):
    need(fmt)
    info = export(run, fmt)
    manifest = json.loads((run.bundle / "manifest.json").read_text())
    entry = manifest["exports"][fmt]
    assert entry["max_abs_error"] <= 1e-6 and entry["rows"] == run.valid.height
    assert manifest["files"][entry["file"]] == entry["sha256"] == info["sha256"]
    bundle = ModelBundle.load(run.bundle)  # the export is verified with the rest
    cols = bundle.feature_columns()
    X = feature_matrix(run.test, cols)
    model = exported_model(bundle, fmt)
    native = bundle.model.predict_proba(X)
    assert np.max(np.abs(model.predict_proba(X) - native)) <= 1e-6
    assert abs(model.predict_one(X[0]) - native[0]) <= 1e-6
    assert model.contributions(X[:2]).shape == (2, len(cols))  # explanations still come from LightGBM


def test_a_tampered_export_is_refused(run, tmp_path):
    need("onnx")
    export(run, "onnx")
    copy = tmp_path / "bundle"
    shutil.copytree(run.bundle, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-1] ^= 1
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(UserError, match="model.onnx is missing or differs from the manifest"):
        ModelBundle.load(copy)


def test_a_missing_export_is_one_line(run, tmp_path):
    copy = tmp_path / "bare"
    shutil.copytree(run.bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest.pop("exports", None)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"deploy.model_runtime=lleaves: the bundle has no lleaves export .*task=export"):
        exported_model(ModelBundle.load(copy), "lleaves")
    with pytest.raises(UserError, match="export.format='pmml'; allowed: onnx, lleaves, treelite"):
        from aml_pipeline.export.runtimes import require

        require("pmml")


@pytest.mark.parametrize("fmt", ["onnx", "lleaves"])
def test_serving_from_an_export_gives_the_same_decisions(run, fmt, tmp_path):
    need(fmt)
    if fmt not in json.loads((run.bundle / "manifest.json").read_text()).get("exports", {}):
        export(run, fmt)
    from aml_pipeline.serving.scorer import DecisionLog, Scorer
    from aml_pipeline.serving.server import build, request_columns
    from aml_pipeline.store import warm_from_parquet

    validated = run.root / "data/validated/transactions.parquet"
    events = pl.read_parquet(validated).filter(pl.col("event_time") >= run.test_start).sort("event_time").head(400)

    def decisions(runtime: str) -> list[dict]:
        cfg = compose_config([*SMALL_RUN, *run.paths, f"bundle={run.bundle}", f"deploy.model_runtime={runtime}"])
        bundle, store, needs, engine = build(cfg)
        assert getattr(bundle.model, "runtime", "native") == runtime
        warm_from_parquet(store, validated, run.test_start)
        scorer = Scorer(bundle, store, needs, engine, DecisionLog(tmp_path / f"{runtime}.jsonl"), explain="alerts")
        scorer.warm_up()  # the explanation thread's model: a copy of the native one, not the export
        assert getattr(scorer._explaining.model, "runtime", "native") == "native"
        cols = [c for c in request_columns(bundle) if c in events.columns]

        async def each() -> list[dict]:  # the service's path: alerts explained on the thread
            return [await scorer.score_async({c: r[c] for c in cols}) for r in events.iter_rows(named=True)]

        try:
            return asyncio.run(each())
        finally:
            scorer.close()

    native, exported = decisions("native"), decisions(fmt)
    assert len(native) == len(exported) == events.height
    assert max(abs(a["score"] - b["score"]) for a, b in zip(native, exported)) <= 1e-6
    assert [a["alert"] for a in native] == [b["alert"] for b in exported]
    assert [a["threshold"] for a in native] == [b["threshold"] for b in exported]
    alerted = [b for b in exported if b["alert"]]
    assert all(b["top_features"] for b in alerted)  # explanations still given


def test_an_export_made_before_evaluation_is_registered_with_the_bundle(run, tmp_path):
    """train -> export -> evaluate: the registered version carries the export, verified on load."""
    need("onnx")
    export(run, "onnx")
    from aml_pipeline.registry import resolve_bundle

    store = [f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"mlflow.artifact_location={tmp_path}/artifacts"]
    cfg = compose_config([*SMALL_RUN, *run.paths, *store, "evaluation=fast", "task=evaluate"])
    registration = run_task(cfg)["registration"]
    bundle = resolve_bundle(registration["model_uri"], cfg)
    assert bundle.registry["version"] == registration["version"] and "onnx" in bundle.exports
    X = feature_matrix(run.test, bundle.feature_columns())
    assert np.max(np.abs(exported_model(bundle, "onnx").predict_proba(X) - bundle.model.predict_proba(X))) <= 1e-6


@pytest.mark.parametrize("fmt", ["onnx", "treelite"])
def test_task_score_and_the_stream_score_through_an_export_with_the_native_alerts(run, fmt, tmp_path):
    """deploy.model_runtime for task=score and the streaming scorer: the export's scores within
    1e-6 of LightGBM's and the very same thresholds and alerts, on every event."""
    need(fmt)
    if fmt not in json.loads((run.bundle / "manifest.json").read_text()).get("exports", {}):
        export(run, fmt)
    from aml_pipeline.streaming.job import build_scorer
    from aml_pipeline.streaming.records import RawRecord

    validated = run.root / "data/validated/transactions.parquet"

    def score(runtime: str) -> pl.DataFrame:
        out = tmp_path / f"{runtime}.parquet"
        info = run_task(compose_config([*SMALL_RUN, *run.paths, "task=score", f"bundle={run.bundle}", f"input={validated}",
                                        f"output={out}", "scoring.explain=none", f"deploy.model_runtime={runtime}"]))
        assert info["model_runtime"] == runtime
        return pl.read_parquet(out)

    native, exported = score("native"), score(fmt)
    assert native["event_id"].to_list() == exported["event_id"].to_list()
    assert (native["score"] - exported["score"]).abs().max() <= 1e-6
    assert native["alert"].to_list() == exported["alert"].to_list() and native["alert"].sum() > 0
    assert native["threshold"].to_list() == exported["threshold"].to_list()
    # the stream (the scorer task=stream builds, fed one micro-batch without Spark)
    cfg = compose_config([*SMALL_RUN, *run.paths, "task=stream", "deploy=file", f"bundle={run.bundle}",
                          f"deploy.model_runtime={fmt}", f"deploy.output={tmp_path / 'out'}",
                          f"deploy.checkpoint={tmp_path / 'checkpoint'}", f"deploy.warm_from={validated}",
                          f"deploy.warm_until='{run.test_start.isoformat()}'", "deploy.progress=false",
                          "deploy.write_decisions=true", "deploy.explain=none"])
    scorer, store, _, _ = build_scorer(cfg)
    assert scorer.bundle.model.runtime == fmt
    window = pl.read_parquet(validated).filter(pl.col("event_time") >= run.test_start)
    lines = [json.dumps({k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()
                         if k not in ("label", "typology", "instance_id")}) for r in window.iter_rows(named=True)]
    scorer.process(0, [RawRecord(t, {"file": "in.jsonl", "line": n}) for n, t in enumerate(lines, start=1)])
    scorer.flush()
    store.close()
    streamed = pl.concat([pl.read_parquet(p) for p in sorted((tmp_path / "out/decisions").glob("*.parquet"))])
    both = streamed.join(native, on="event_id", suffix="_native")
    assert both.height == window.height == streamed.height
    assert (both["score"] - both["score_native"]).abs().max() <= 1e-6
    assert both["alert"].to_list() == both["alert_native"].to_list()
    assert both["threshold"].to_list() == both["threshold_native"].to_list()
