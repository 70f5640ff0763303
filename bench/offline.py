"""Offline benchmark: the real tasks end to end, and feature throughput beside pandas.

Usage: python bench/offline.py [--rows 1000000] [--quickstart] [--skip-pandas]

1. Stages: ``data``, ``features``, ``train``, ``evaluate`` run as ``python -m aml_pipeline``
   runs them (the task functions of a config composed from ``conf/``), on the default
   synthetic source scaled to ~``rows`` transactions, writing under ``bench/out/``; each
   stage's wall time and the end-to-end total.
2. Feature throughput: the default plan fitted and applied to all validated events in one
   frame (the offline case), in events per second.
3. Beside it, the rolling step's per-account count / sum / mean / max over 1h, 24h and 7d
   for the sender's out-flow and the receiver's in-flow, strictly before each event,
   written the obvious pandas way (``groupby(account).rolling(w, closed="left")`` on a time
   index), timed against the same columns from the plan, and checked equal (1e-9
   relative) so the comparison is honest.
4. ``--quickstart``: ``python -m aml_pipeline +experiment=quickstart`` once, as a user runs it.

Figures go to stdout and ``bench/out/offline.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
from hydra import compose, initialize_config_dir

from aml_pipeline import CONF_DIR
from aml_pipeline.config import register_configs
from aml_pipeline.features.plan import FeaturePlan
from aml_pipeline.tasks import data, evaluate, features, train

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
WINDOWS = ["1h", "24h", "7d"]
AGGS = ["count", "sum", "mean", "max"]
#: (side, flow, account column): the sender's out-flow and the receiver's in-flow.
COMBOS = [("src", "out", "src_account"), ("dst", "in", "dst_account")]
#: ~0.55 transactions per account per day: the default 20,000 accounts x 90 days is ~1M.
ACCOUNTS_PER_MILLION = 20_000


def output_overrides(out: Path) -> list[str]:
    """Every file the tasks write goes under ``out`` (git-ignored), MLflow included."""
    return [
        f"paths.data_dir={out}/data",
        f"paths.reports_dir={out}/reports",
        f"paths.models_dir={out}/models",
        f"mlflow.tracking_uri=sqlite:///{out}/mlruns/mlflow.db",
        f"mlflow.artifact_location={out}/mlruns/artifacts",
    ]


def size_overrides(rows: int) -> list[str]:
    return [f"source.n_accounts={max(200, round(ACCOUNTS_PER_MILLION * rows / 1_000_000))}"]


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def run_stages(args_overrides: list[str]) -> tuple[dict, dict]:
    """Each task of ``task=all`` in order, as the command line runs them; wall seconds each."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=args_overrides)
    seconds = {}
    for name, module in (("data", data), ("features", features), ("train", train), ("evaluate", evaluate)):
        print(f"\n=== stage {name}", flush=True)
        _, seconds[name] = timed(lambda: module.run(cfg))
    seconds["total"] = sum(seconds.values())
    return cfg, seconds


def plan_throughput(cfg, events: pl.DataFrame) -> dict:
    """The default plan fitted on and applied to all events in one frame (offline).

    Best of three; CPU seconds and the load average beside the wall time, because on a
    shared machine the wall time also measures the neighbours.
    """
    plan = FeaturePlan.from_features_config(cfg.features)
    runs = []
    for _ in range(3):
        cpu = time.process_time()
        _, wall = timed(lambda: FeaturePlan.from_features_config(cfg.features).fit_transform(events))
        runs.append((wall, time.process_time() - cpu))
    best = min(w for w, _ in runs)
    return {"events": events.height, "columns": len(plan.feature_columns()), "seconds": round(best, 3),
            "seconds_all_runs": [round(w, 3) for w, _ in runs], "cpu_seconds_all_runs": [round(c, 3) for _, c in runs],
            "events_per_second": round(events.height / best), "load_average": os.getloadavg()[0]}


# ------------------------------------------------------------------------ pandas comparison
def rolling_pandas(events: pd.DataFrame) -> pd.DataFrame:
    """The obvious pandas way: per account, a time-indexed rolling window, closed on the left.

    ``closed="left"`` makes each window ``[t - w, t)``: strictly earlier events only, so
    events at the same instant never see each other (the plan's same-instant rule).
    """
    out = {}
    for side, flow, account in COMBOS:
        df = events[[account, "event_time", "amount"]].reset_index(names="_row").sort_values([account, "event_time"], kind="stable")
        rolling_input = df.set_index("event_time").groupby(account, sort=True)["amount"]
        rows = df["_row"].to_numpy()
        for w in WINDOWS:
            r = rolling_input.rolling(w, closed="left")
            for agg in AGGS:
                values = getattr(r, agg)().to_numpy()  # group order = the sorted order of df
                col = np.empty(len(events))
                col[rows] = values
                out[f"{side}_{flow}_{agg}_{w}"] = col
    result = pd.DataFrame(out)
    for c in result.columns:  # an empty window: count 0 and sum 0 (the plan's convention)
        if "_count_" in c or "_sum_" in c:
            result[c] = result[c].fillna(0.0)
    return result


def rolling_ours(events: pl.DataFrame) -> pl.DataFrame:
    """The same columns from the plan: the rolling step for (src, out) and (dst, in)."""
    steps = {f"{side}_{flow}": {"kind": "rolling", "windows": WINDOWS, "sides": [side], "flows": [flow], "aggs": AGGS}
             for side, flow, _ in COMBOS}
    return FeaturePlan.from_config(steps).transform(events)


def compare(ours: pl.DataFrame, theirs: pd.DataFrame, rtol: float = 1e-9) -> dict:
    """Worst relative difference per column; nulls must match NaNs exactly."""
    worst, mismatched = 0.0, []
    for c in theirs.columns:
        a = ours[c].cast(pl.Float64).to_numpy()
        b = theirs[c].to_numpy()
        if not np.array_equal(np.isnan(a), np.isnan(b)):
            mismatched.append(c)
            continue
        ok = ~np.isnan(a)
        rel = np.abs(a[ok] - b[ok]) / np.maximum(np.abs(b[ok]), 1e-300)
        rel[(a[ok] == b[ok])] = 0.0
        col_worst = float(rel.max()) if rel.size else 0.0
        worst = max(worst, col_worst)
        if col_worst > rtol:
            mismatched.append(c)
    return {"columns": len(theirs.columns), "worst_relative_difference": worst, "tolerance": rtol, "mismatched": mismatched,
            "equal": not mismatched}


def pandas_comparison(events: pl.DataFrame) -> dict:
    ours_frame, ours_secs = timed(lambda: rolling_ours(events))
    ours_secs = min(ours_secs, timed(lambda: rolling_ours(events))[1])
    pdf = events.select("src_account", "dst_account", "event_time", "amount").to_pandas()
    theirs, pandas_secs = timed(lambda: rolling_pandas(pdf))
    n = events.height
    return {
        "columns": 2 * len(WINDOWS) * len(AGGS),
        "ours_seconds": round(ours_secs, 3),
        "ours_events_per_second": round(n / ours_secs),
        "pandas_seconds": round(pandas_secs, 3),
        "pandas_events_per_second": round(n / pandas_secs),
        "speedup": round(pandas_secs / ours_secs, 1),
        "check": compare(ours_frame, theirs),
    }


def quickstart(out: Path) -> dict:
    """``python -m aml_pipeline +experiment=quickstart`` once, as a user runs it."""
    cmd = [sys.executable, "-m", "aml_pipeline", "+experiment=quickstart", *output_overrides(out)]
    proc, secs = timed(lambda: subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True))
    if proc.returncode:
        print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
    return {"seconds": round(secs, 1), "returncode": proc.returncode, "command": " ".join(cmd[1:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="about how many transactions to simulate")
    ap.add_argument("--quickstart", action="store_true", help="also time python -m aml_pipeline +experiment=quickstart")
    ap.add_argument("--skip-pandas", action="store_true", help="leave out the pandas comparison")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT.relative_to(ROOT) if Path.cwd() == ROOT else OUT  # bench/out/... as in the docs

    cfg, stages = run_stages(output_overrides(out) + size_overrides(args.rows))
    events = pl.read_parquet(Path(cfg.paths.data_dir) / "validated" / "transactions.parquet")
    split = json.loads((Path(cfg.paths.data_dir) / "features" / "split.json").read_text())
    report = {
        "rows": events.height,
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "stages_seconds": {k: round(v, 2) for k, v in stages.items()},
        "features_task_events_per_second": split.get("events_per_second"),
        "plan": plan_throughput(cfg, events),
    }
    if not args.skip_pandas:
        report["rolling_vs_pandas"] = pandas_comparison(events)
    if args.quickstart:
        report["quickstart"] = quickstart(OUT / "quickstart")
    report["load_average_at_end"] = os.getloadavg()

    print("\n=== offline benchmark")
    print(f"transactions            {report['rows']:,}")
    for k, v in report["stages_seconds"].items():
        print(f"stage {k:18s}{v:8.1f} s")
    p = report["plan"]
    print(f"default plan (fit+transform, {p['columns']} columns)  {p['seconds']:.2f} s  {p['events_per_second']:,} events/s"
          f"  (cpu {min(p['cpu_seconds_all_runs']):.2f} s, load {p['load_average']:.1f})")
    if "rolling_vs_pandas" in report:
        r = report["rolling_vs_pandas"]
        print(f"rolling {r['columns']} columns: ours {r['ours_seconds']:.2f} s ({r['ours_events_per_second']:,}/s), "
              f"pandas {r['pandas_seconds']:.1f} s ({r['pandas_events_per_second']:,}/s), x{r['speedup']}; "
              f"equal to 1e-9: {r['check']['equal']} (worst {r['check']['worst_relative_difference']:.1e})")
    if "quickstart" in report:
        q = report["quickstart"]
        print(f"quickstart              {q['seconds']:8.1f} s (exit {q['returncode']})")
    (OUT / "offline.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {OUT / 'offline.json'}")


if __name__ == "__main__":
    main()
