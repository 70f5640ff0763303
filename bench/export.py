"""Export benchmark: single-row and batch latency of each export runtime beside native LightGBM.

Usage: python bench/export.py [--bundle models/bundle] [--features data/features/features.parquet]
                              [--single 3000] [--formats onnx,lleaves,treelite]

Run after the quickstart (``python -m aml_pipeline +experiment=quickstart``). The bundle is
copied to a temporary folder and exported there in each format (``task=export``'s own code,
parity check included), so the original is untouched. Then, in the same process and on
one thread each (the service's setting):

- single row: ``predict_one`` on ``--single`` validation rows one at a time, p50 and p99;
- batch: ``predict`` of the whole validation window at once, rows per second;

and each runtime's time over native LightGBM's (below 1 = faster). Figures go to stdout
and ``bench/out/export.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from aml_pipeline.bundle import ModelBundle, feature_matrix
from aml_pipeline.export.bundle_export import export_bundle, exported_model
from aml_pipeline.serving.scorer import single_threaded

OUT = Path(__file__).resolve().parent / "out"


def single_row(predict_one, X: np.ndarray) -> tuple[float, float]:
    for x in X[:50]:  # warm-up
        predict_one(x)
    times = np.empty(len(X))
    for i, x in enumerate(X):
        t = time.perf_counter()
        predict_one(x)
        times[i] = time.perf_counter() - t
    return float(np.percentile(times, 50) * 1e6), float(np.percentile(times, 99) * 1e6)


def batch(predict, X: np.ndarray, repeat: int = 3) -> float:
    predict(X[:100])
    best = min(_timed(predict, X) for _ in range(repeat))
    return X.shape[0] / best


def _timed(fn, X) -> float:
    t = time.perf_counter()
    fn(X)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, default=Path("models/bundle"))
    ap.add_argument("--features", type=Path, default=Path("data/features/features.parquet"))
    ap.add_argument("--single", type=int, default=3000, help="rows scored one at a time")
    ap.add_argument("--formats", default="onnx,lleaves,treelite")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="aml_bench_export_"))
    folder = tmp / "bundle"
    shutil.copytree(args.bundle, folder)
    cols = json.loads((folder / "manifest.json").read_text())["feature_columns"]
    valid = pl.scan_parquet(args.features).filter(pl.col("split") == "valid").select(cols).collect()
    X = feature_matrix(valid, cols)
    exports = {}
    for fmt in [f for f in args.formats.split(",") if f]:
        t = time.perf_counter()
        info = export_bundle(folder, fmt, X, 1e-6)
        exports[fmt] = {"export_seconds": round(time.perf_counter() - t, 2), "max_abs_error": info["max_abs_error"],
                        "bytes": (folder / info["file"]).stat().st_size}
    bundle = ModelBundle.load(folder)
    single_threaded(bundle)
    rows = X[: args.single]
    results = {}
    for runtime in ["native", *exports]:
        model = exported_model(bundle, runtime)
        p50, p99 = single_row(model.predict_one, rows)
        results[runtime] = {"single_p50_us": round(p50, 1), "single_p99_us": round(p99, 1),
                            "batch_rows_per_s": round(batch(model.predict_proba, X)), **exports.get(runtime, {})}
    base = results["native"]
    for r in results.values():
        r["single_p50_ratio"] = round(r["single_p50_us"] / base["single_p50_us"], 3)
        r["batch_time_ratio"] = round(base["batch_rows_per_s"] / r["batch_rows_per_s"], 3)
    shutil.rmtree(tmp, ignore_errors=True)
    model_meta = json.loads((args.bundle / "manifest.json").read_text())["model"]
    header = (f"bundle {args.bundle}: {model_meta.get('best_iteration')} trees, {len(cols)} features; "
              f"{X.shape[0]:,} validation rows (batch), {len(rows):,} single rows; one thread each")
    print(header)
    print(f"{'runtime':<10} {'single p50 µs':>14} {'p99 µs':>8} {'x native':>9} {'batch rows/s':>13} {'x native time':>14} "
          f"{'max |Δ|':>9} {'export s':>9}")
    for name, r in results.items():
        print(f"{name:<10} {r['single_p50_us']:>14.1f} {r['single_p99_us']:>8.1f} {r['single_p50_ratio']:>9.2f} "
              f"{r['batch_rows_per_s']:>13,} {r['batch_time_ratio']:>14.2f} "
              f"{r.get('max_abs_error', 0.0):>9.1e} {r.get('export_seconds', 0.0):>9.1f}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "export.json").write_text(json.dumps({"setup": header, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
