"""Data-layer benchmark: simulator throughput and CSV read+validate throughput.

Usage: python bench/data.py [--rows 1000000] [--paysim FILE]

1. Simulator: generate ~``rows`` transactions with the synthetic source (the 20,000-account,
   90-day default is ~1M), beside the obvious alternative, a per-transaction Python loop
   into a pandas DataFrame (run on a smaller count and reported as a rate).
2. Read + validate: a ``rows``-row CSV in PaySim format (made by tiling ``--paysim`` if
   given, else written from the simulator's output) read by the PaySim adapter and split
   by the row-level rules, beside the same reading and checks written in plain pandas.

Figures go to stdout and ``bench/out/data.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl

from aml_pipeline.sources.paysim import PaySimSource
from aml_pipeline.sources.synthetic import SyntheticSource
from aml_pipeline.validation import build_rules, validate

OUT = Path(__file__).resolve().parent / "out"
CURRENCIES = ["USD", "EUR", "GBP"]


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def simulate_loop(n: int, seed: int = 0) -> pd.DataFrame:
    """The obvious way: one Python iteration per transaction, rows appended to a list."""
    rng = random.Random(seed)
    start = pd.Timestamp("2025-01-01", tz="UTC")
    rows = []
    for i in range(n):
        src = f"A{rng.randrange(20000):06d}"
        dst = f"A{rng.randrange(20000):06d}"
        amount = round(rng.lognormvariate(3.5, 1.2), 2)
        t = start + pd.Timedelta(seconds=rng.randrange(90 * 86400))
        rows.append((f"loop-{i}", t, src, dst, amount, "USD", "card", int(rng.random() < 0.004)))
    return pd.DataFrame(rows, columns=["event_id", "event_time", "src_account", "dst_account", "amount", "currency", "channel", "label"])


def write_paysim_csv(path: Path, rows: int, paysim: Path | None) -> None:
    """A PaySim-format CSV of ``rows`` data lines (tiled real file, or simulator output)."""
    if paysim is not None:
        base = pl.read_csv(paysim, infer_schema=False)
        reps = -(-rows // base.height)
        frame = pl.concat([base.with_columns((pl.col("step").cast(pl.Int64) + 743 * k).cast(pl.String)) for k in range(reps)]).head(rows)
    else:
        syn = SyntheticSource(n_accounts=max(2000, round(rows / (0.55 * 90) * 1.05)), days=90, seed=1).read().head(rows)
        rng = np.random.default_rng(1)
        bal = rng.lognormal(9, 1.5, syn.height).round(2)
        frame = syn.select(
            step=((pl.col("event_time") - pl.col("event_time").min()).dt.total_hours() + 1).cast(pl.String),
            type=pl.col("channel").str.to_uppercase(),
            amount=pl.col("amount").cast(pl.String),
            nameOrig=pl.col("src_account"),
            oldbalanceOrg=pl.lit(bal).cast(pl.String),
            newbalanceOrig=(pl.lit(bal) - pl.col("amount")).clip(0).round(2).cast(pl.String),
            nameDest=pl.col("dst_account"),
            oldbalanceDest=pl.lit(0.0).cast(pl.String),
            newbalanceDest=pl.col("amount").cast(pl.String),
            isFraud=pl.col("label").cast(pl.String),
            isFlaggedFraud=pl.lit("0"),
        )
    frame.write_csv(path)


def read_validate_polars(path: Path) -> tuple[int, int]:
    staged = PaySimSource(path=str(path)).read()
    result = validate(staged, build_rules(CURRENCIES, require_label=True))
    assert result.reconciles()
    return result.rows_valid, result.rows_quarantined


def read_validate_pandas(path: Path) -> tuple[int, int]:
    """The same mapping and rules written the plain pandas way."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    start = pd.Timestamp("2025-01-01", tz="UTC")
    step = pd.to_numeric(df["step"], errors="coerce")
    out = pd.DataFrame({
        "event_id": path.stem + ":" + (df.index + 2).astype(str),
        "event_time": start + pd.to_timedelta(step - 1, unit="h"),
        "src_account": df["nameOrig"].str.strip(),
        "dst_account": df["nameDest"].str.strip(),
        "amount": pd.to_numeric(df["amount"], errors="coerce"),
        "currency": "USD",
        "label": df["isFraud"].str.strip().str.lower().map({"1": 1, "1.0": 1, "0": 0, "0.0": 0}),
    })
    for c in ("oldbalanceOrg", "newbalanceOrig", "oldbalanceDest", "newbalanceDest"):
        out[c] = pd.to_numeric(df[c], errors="coerce")
    bad = (
        out["event_id"].isna() | out["event_id"].duplicated() | out["event_time"].isna()
        | out["src_account"].isin(["", None]) | out["dst_account"].isin(["", None])
        | ~np.isfinite(out["amount"]) | (out["amount"] <= 0) | ~out["currency"].isin(CURRENCIES) | out["label"].isna()
    )
    quarantine = df[bad].copy()
    quarantine["record"] = quarantine.apply(lambda r: json.dumps(r.to_dict()), axis=1) if len(quarantine) else []
    valid = out[~bad]
    return len(valid), len(quarantine)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--loop-rows", type=int, default=100_000, help="transactions for the per-row loop baseline")
    ap.add_argument("--paysim", type=Path, default=None, help="a real PaySim CSV to tile (default: simulator output)")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    figures: dict[str, float] = {}

    # 1. simulator
    n_accounts = max(2000, round(args.rows / (0.55 * 90)))
    frame, secs = timed(lambda: SyntheticSource(n_accounts=n_accounts, days=90, seed=42).read())
    loop, loop_secs = timed(lambda: simulate_loop(args.loop_rows))
    figures.update(sim_rows=frame.height, sim_seconds=secs, sim_rows_per_s=frame.height / secs,
                   sim_label_rate=float(frame["label"].mean()),
                   loop_rows=len(loop), loop_seconds=loop_secs, loop_rows_per_s=len(loop) / loop_secs)
    figures["sim_speedup"] = figures["sim_rows_per_s"] / figures["loop_rows_per_s"]
    print(f"simulator      : {frame.height:,} transactions in {secs:.2f} s = {frame.height / secs:,.0f} tx/s "
          f"(label rate {figures['sim_label_rate']:.3%})")
    print(f"  per-row loop : {len(loop):,} transactions in {loop_secs:.2f} s = {len(loop) / loop_secs:,.0f} tx/s "
          f"-> vectorised is {figures['sim_speedup']:.0f}x faster")
    del frame, loop

    # 2. read + validate
    csv = OUT / f"paysim_{args.rows}.csv"
    write_paysim_csv(csv, args.rows, args.paysim)
    (valid, bad), secs = timed(lambda: read_validate_polars(csv))
    (pvalid, pbad), psecs = timed(lambda: read_validate_pandas(csv))
    assert (valid, bad) == (pvalid, pbad), f"engines disagree: polars {valid}/{bad}, pandas {pvalid}/{pbad}"
    rows = valid + bad
    figures.update(csv_rows=rows, csv_mb=csv.stat().st_size / 1e6, rv_seconds=secs, rv_rows_per_s=rows / secs,
                   pandas_rv_seconds=psecs, pandas_rv_rows_per_s=rows / psecs, rv_speedup=psecs / secs)
    print(f"read+validate  : {rows:,} rows ({figures['csv_mb']:.0f} MB CSV) in {secs:.2f} s = {rows / secs:,.0f} rows/s")
    print(f"  plain pandas : {psecs:.2f} s = {rows / psecs:,.0f} rows/s -> {psecs / secs:.1f}x")
    (OUT / "data.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
