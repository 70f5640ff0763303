"""Spark benchmark: the Spark engine beside polars on the same events, and its driver memory.

Usage: python bench/spark.py [--rows 1000000 [10000000 ...]] [--master local[2]] [--gbt-iter 50]
                              [--skip-train] [--shuffle-partitions N] [--no-second-run]
                              [--override HYDRA_OVERRIDE ...]

For each size (the default synthetic source scaled like bench/offline.py: 20,000 accounts
per million transactions; ``task=data`` with polars writes the validated events once):

1. In a fresh process with ``engine=spark`` (``--master``, default ``local[2]``):
   - Spark session start-up seconds (the JVM launch, separately);
   - the feature plan (``task=features``: split, fit on the training window, every row's
     features, one parquet file): wall seconds and events/s, split into the small jobs
     before (split, column checks, fits), the account partitions (the sizes job, the
     partitions job with the rows it shipped, the time buckets job) and the copy into one
     file; the JVM's CPU seconds for it (comparable across machine
     loads, unlike wall time);
   - first size only (unless ``--no-second-run``): the same feature run once more in the
     same process, which no longer pays the first run's fixed costs (the JVM's code
     warming up, starting the Python workers); the difference is reported as those costs;
   - MLlib GBT training (``model=spark_gbt``, ``--gbt-iter`` trees at most, early stopping
     on the validation window) on the Spark feature table: wall seconds (``--skip-train``:
     features only, also for polars);
   - peak memory of the driver: the Python process and the JVM (``VmHWM``, the peak
     resident set, of each). In local mode the JVM is also the executor, so its heap is
     bounded by ``engine.driver_memory``; the point is that nothing grows with the rows
     (nothing is collected to the driver: the peak should stay flat when rows grow 10x).
2. First size only, in another fresh process with polars: the same plan
   (``task=features``, also run twice), and LightGBM (``model=lightgbm``) trained on the
   same features on the driver: wall seconds, events/s; the Spark/polars ratio of the
   feature time, for the first runs and for the second runs.

``--override`` adds a Hydra override to every run (repeatable), e.g. a smaller plan with
``--override='~features.steps.paths'``.

Figures go to stdout and ``bench/out/spark.json``; data under ``bench/out/spark/``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
#: As bench/offline.py: ~0.55 transactions per account per day, 20,000 accounts x 90 days ~ 1M.
ACCOUNTS_PER_MILLION = 20_000
#: --shuffle-partitions (None: engine.shuffle_partitions' default). Each partition of a pass
#: is evaluated in one piece by a Python worker, so more rows need more partitions.
SHUFFLE_PARTITIONS: int | None = None


#: --override: extra Hydra overrides for every child (e.g. a smaller plan).
EXTRA: list[str] = []


def overrides(rows: int, master: str) -> list[str]:
    out = OUT / "spark" / str(rows)
    return [*EXTRA,
        f"source.n_accounts={max(200, round(ACCOUNTS_PER_MILLION * rows / 1_000_000))}",
        f"paths.data_dir={out}/data", f"paths.reports_dir={out}/reports", f"paths.models_dir={out}/models",
        f"mlflow.tracking_uri=sqlite:///{out}/mlruns/mlflow.db", f"mlflow.artifact_location={out}/mlruns/artifacts",
        f'engine.master="{master}"', "seed=42",
    ]


def compose(args: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from aml_pipeline import CONF_DIR
    from aml_pipeline.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=args)


def peak_rss_mb(pid: int | None = None) -> float | None:
    """Peak resident set (VmHWM) of a process, in MB."""
    if pid is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (a load-independent cost measure)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def workers_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process's descendants (Spark's Python workers under the JVM): user +
    system of each live descendant plus what it has reaped of its own children."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(int(_stat(int(entry.name))[1]), []).append(int(entry.name))
            except (OSError, IndexError):
                continue
    total, todo = 0, list(children.get(pid, []))
    while todo:
        child = todo.pop()
        try:
            fields = _stat(child)
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])
        todo += children.get(child, [])
    return total / os.sysconf("SC_CLK_TCK")


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def print_breakdown(b: dict | None) -> None:
    if not b:
        return
    print(f"    split, checks, fits        {b['split_checks_fit']:.1f} s")
    if b.get("account_partitions") is not None:
        d = b["account_partitions_detail"]
        print(f"    account partitions         {b['account_partitions']:.1f} s: sizes {d['sizes_seconds']:.1f} s, "
              f"{d['partitions']} partitions {d['partitions_seconds']:.1f} s ({d['rows_shipped']:,} rows for "
              f"{d['events']:,} events, {d['history_rows']:,} history only), {d['buckets']} time buckets "
              f"{d['buckets_seconds']:.1f} s")
    if b.get("spark_sort_write"):
        print(f"    sort + write               {b['spark_sort_write']:.1f} s (steps after the partitions, e.g. target encodings)")
    print(f"    copy into one file         {b['copy_to_one_file']:.1f} s")
    print(f"    JVM CPU                    {b['jvm_cpu_seconds']:.1f} s")
    print(f"    Python workers' CPU        {b.get('python_workers_cpu_seconds', 0.0):.1f} s (Arrow UDFs, mapInArrow)")


# ----------------------------------------------------------------------------- child processes
def child_data(rows: int, master: str, gbt_iter: int, train_too: bool, again: bool) -> dict:
    from aml_pipeline.tasks import data

    cfg = compose(overrides(rows, master))
    _, secs = timed(lambda: data.run(cfg))
    summary = json.loads((Path(cfg.paths.data_dir) / "validated" / "summary.json").read_text())
    return {"data_seconds": round(secs, 2), "events": summary.get("rows_valid") or summary.get("valid")}


def spark_features_run(cfg, jvm_pid: int) -> tuple[dict, float, dict]:
    """One ``task=features`` with Spark: (bounds, wall seconds, breakdown)."""
    from aml_pipeline.spark import accounts
    from aml_pipeline.spark import io as spark_io
    from aml_pipeline.tasks import features

    accounts.LAST_RUN.clear()
    cpu0, workers0 = cpu_seconds(jvm_pid), workers_cpu_seconds(jvm_pid)
    bounds, feat_secs = timed(lambda: features.run(cfg))
    feat_cpu = cpu_seconds(jvm_pid) - cpu0
    workers_cpu = workers_cpu_seconds(jvm_pid) - workers0
    write, copy = spark_io.LAST_PUBLISH.get("spark_write", 0.0), spark_io.LAST_PUBLISH.get("copy", 0.0)
    run = dict(accounts.LAST_RUN)
    parts = sum(run.get(k, 0.0) for k in ("sizes_seconds", "partitions_seconds", "buckets_seconds"))
    breakdown = {"split_checks_fit": round(feat_secs - write - copy - parts, 2),
                 "account_partitions": round(parts, 2) if run else None,
                 "account_partitions_detail": {k: round(v, 2) if isinstance(v, float) else v for k, v in run.items()} or None,
                 "spark_sort_write": round(write, 2),
                 "copy_to_one_file": round(copy, 2), "jvm_cpu_seconds": round(feat_cpu, 1),
                 "python_workers_cpu_seconds": round(workers_cpu, 1)}
    return bounds, feat_secs, breakdown


def child_spark(rows: int, master: str, gbt_iter: int, train_too: bool, again: bool) -> dict:
    from omegaconf import open_dict

    from aml_pipeline.spark.session import get_session

    cfg = compose([*overrides(rows, master), "engine=spark", "model=spark_gbt",
                   f"model.params.maxIter={gbt_iter}",
                   *([f"engine.shuffle_partitions={SHUFFLE_PARTITIONS}"] if SHUFFLE_PARTITIONS else [])])
    spark, startup = timed(lambda: get_session(cfg.engine, cfg.paths.data_dir))
    jvm_pid = int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())
    bounds, feat_secs, breakdown = spark_features_run(cfg, jvm_pid)
    warm = None
    if again:  # the same run once more in the same JVM: without its first-run costs
        _, warm_secs, warm_breakdown = spark_features_run(cfg, jvm_pid)
        warm = {"features_seconds": round(warm_secs, 2), "features_breakdown": warm_breakdown}
    result, train_secs = {}, None
    if train_too:
        from aml_pipeline.tasks import train

        with open_dict(cfg):
            cfg.task = "train"
        result, train_secs = timed(lambda: train.run(cfg))
    events = sum(bounds["rows"].values())
    return {"master": master, "session_start_seconds": round(startup, 2),
            "features_seconds": round(feat_secs, 2), "features_events_per_second": round(events / feat_secs),
            "features_breakdown": breakdown, "second_run": warm, "gbt_train_seconds": train_secs and round(train_secs, 2),
            "gbt_trees": result.get("best_iteration"),
            "gbt_valid_pr_auc": result.get("valid_pr_auc"),
            "peak_rss_mb": {"python_driver": round(peak_rss_mb(), 1), "jvm": round(peak_rss_mb(jvm_pid) or 0.0, 1)},
            "events": events, "load_average": os.getloadavg()[0]}


def child_polars(rows: int, master: str, gbt_iter: int, train_too: bool, again: bool) -> dict:
    from omegaconf import open_dict

    from aml_pipeline.tasks import features

    cfg = compose([*overrides(rows, master), "engine=polars", "model=lightgbm"])
    bounds, feat_secs = timed(lambda: features.run(cfg))
    warm = {"features_seconds": round(timed(lambda: features.run(cfg))[1], 2)} if again else None
    result, train_secs = {}, None
    if train_too:
        from aml_pipeline.tasks import train

        with open_dict(cfg):
            cfg.task = "train"
        result, train_secs = timed(lambda: train.run(cfg))
    events = sum(bounds["rows"].values())
    return {"features_seconds": round(feat_secs, 2), "features_events_per_second": round(events / feat_secs),
            "second_run": warm, "lightgbm_train_seconds": train_secs and round(train_secs, 2), "lightgbm_best_iteration": result.get("best_iteration"),
            "lightgbm_valid_pr_auc": result.get("valid_pr_auc"), "peak_rss_mb_python": round(peak_rss_mb(), 1),
            "load_average": os.getloadavg()[0]}


CHILDREN = {"data": child_data, "spark": child_spark, "polars": child_polars}


def run_child(kind: str, rows: int, args, again: bool = False) -> dict:
    """One measurement in a fresh process (a fresh JVM; peak memory of that run only)."""
    out = OUT / "spark" / f"{kind}-{rows}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--child", kind, "--rows", str(rows), "--master", args.master,
           "--gbt-iter", str(args.gbt_iter), "--child-out", str(out)]
    if args.skip_train:
        cmd.append("--skip-train")
    if again:
        cmd.append("--again")
    if args.shuffle_partitions:
        cmd += ["--shuffle-partitions", str(args.shuffle_partitions)]
    cmd += [f"--override={o}" for o in args.override]
    print(f"\n=== {kind}, {rows:,} rows", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    result = json.loads(out.read_text())
    result["process_seconds"] = round(time.perf_counter() - start, 1)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--gbt-iter", type=int, default=50)
    ap.add_argument("--no-second-run", action="store_true",
                    help="first size: skip the second feature run in the same process (which shows the first run's fixed costs)")
    ap.add_argument("--skip-train", action="store_true", help="features only: no MLlib GBT or LightGBM training")
    ap.add_argument("--shuffle-partitions", type=int,
                    help="engine.shuffle_partitions for Spark (default: the config's, 8); e.g. 64 at 10M rows")
    ap.add_argument("--override", action="append", default=[],
                    help="an extra Hydra override for every run (repeatable), e.g. --override='~features.steps.paths'")
    ap.add_argument("--child", choices=sorted(CHILDREN))
    ap.add_argument("--child-out")
    ap.add_argument("--again", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    global SHUFFLE_PARTITIONS
    SHUFFLE_PARTITIONS = args.shuffle_partitions
    EXTRA[:] = args.override
    if args.child:
        result = CHILDREN[args.child](args.rows[0], args.master, args.gbt_iter, not args.skip_train, args.again)
        Path(args.child_out).write_text(json.dumps(result, indent=2) + "\n")
        return
    report: dict = {"cores": os.cpu_count(), "master": args.master, "overrides": args.override,
                    "shuffle_partitions": args.shuffle_partitions, "sizes": {}}
    for i, rows in enumerate(args.rows):
        size: dict = {"data": run_child("data", rows, args)}
        again = i == 0 and not args.no_second_run
        size["spark"] = s = run_child("spark", rows, args, again)
        if i == 0:
            size["polars"] = p = run_child("polars", rows, args, again=again)
            size["spark_vs_polars_feature_time"] = round(s["features_seconds"] / p["features_seconds"], 2)
            if again:
                size["spark_vs_polars_feature_time_second_run"] = round(
                    s["second_run"]["features_seconds"] / p["second_run"]["features_seconds"], 2)
            if not args.skip_train:
                size["gbt_vs_lightgbm_train_time"] = round(s["gbt_train_seconds"] / p["lightgbm_train_seconds"], 2)
        report["sizes"][str(rows)] = size
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "spark.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\n=== Spark engine benchmark (bench/out/spark.json)")
    for rows, size in report["sizes"].items():
        s = size["spark"]
        print(f"{int(rows):>12,} rows requested, {s['events']:,} events, master {s['master']}, "
              f"load average {s['load_average']:.1f}")
        print(f"  Spark session start          {s['session_start_seconds']:.1f} s")
        print(f"  features, Spark              {s['features_seconds']:.1f} s ({s['features_events_per_second']:,} events/s)")
        print_breakdown(s.get("features_breakdown"))
        if "polars" in size:
            p = size["polars"]
            print(f"  features, polars             {p['features_seconds']:.1f} s ({p['features_events_per_second']:,} events/s)"
                  f"  -> Spark / polars = {size['spark_vs_polars_feature_time']}x")
        if s.get("second_run"):
            w = s["second_run"]
            print(f"  features, Spark, second run  {w['features_seconds']:.1f} s (same JVM and Python workers: "
                  f"the first run's fixed costs were {s['features_seconds'] - w['features_seconds']:.1f} s)")
            print_breakdown(w["features_breakdown"])
            if "polars" in size and p.get("second_run"):
                print(f"  features, polars, second run {p['second_run']['features_seconds']:.1f} s"
                      f"  -> Spark / polars = {size['spark_vs_polars_feature_time_second_run']}x")
            if p.get("lightgbm_train_seconds") is not None:
                print(f"  train, LightGBM (driver)     {p['lightgbm_train_seconds']:.1f} s")
        if s.get("gbt_train_seconds") is not None:
            print(f"  train, MLlib GBT             {s['gbt_train_seconds']:.1f} s ({s['gbt_trees']} trees)")
        print(f"  peak driver memory           Python {s['peak_rss_mb']['python_driver']:.0f} MB + JVM {s['peak_rss_mb']['jvm']:.0f} MB")

if __name__ == "__main__":
    main()
