"""AMLworld laundering inside the simulator's normal traffic: a benchmark input from another generator.

Usage: python bench/amlworld_mix.py --patterns tests/data/amlworld/HI-Medium_head353_Patterns.txt \\
           --seed 1 --accounts 14000 --days 60 --out bench/out/amlworld_mix/seed1.parquet [--max-attempts N]

Problem
-------
The realistic world (``source.realism=realistic``) was designed together with the feature
plan, so a good score on it may only mean the plan learned our own generator. IBM AMLworld
(Altman et al., NeurIPS 2023) is an independent generator, but the only real AMLworld files
we have are its ``*_Patterns.txt`` ground truth: laundering attempts, no normal traffic.

Solution
--------
Put the AMLworld attempts into the normal traffic of our realistic world, so the pipeline is
trained and judged on laundering shaped by someone else's generator:

1. *World.* ``SyntheticSource(n_accounts, days, seed, realism="realistic")`` is simulated and
   only its normal rows (label 0) are kept, unchanged: every positive comes from AMLworld.
   The world's account attributes (kind, country, bank, region) are rebuilt with the same
   seed (the accounts are the first draws of the source's random stream) and checked
   against every normal row, so a change of the simulator's stream fails loudly here.
2. *Attempts.* ``aml_pipeline.sources.amlworld.read_patterns`` gives each attempt's rows
   (typology normalised: ``fan_in``, ``cycle``, ...; attempts numbered from 1 in file
   order). The number of attempts makes laundering ~``TARGET_RATE`` (0.5 %) of all rows
   (or ``max_attempts``), split between typologies in the file's own proportions (largest
   remainder) and drawn at random inside each typology.
3. *Accounts.* Every distinct AMLworld account (bank + account) becomes one distinct
   *person* account of the world that has normal activity, drawn at random among the
   persons of one country per attempt (drawn by the persons' share), so laundering
   hides among ordinary accounts' salaries, card payments and rents, as it does in
   AMLworld. No world account is used twice unless the attempts name more accounts than
   the world has active persons (then the rest are drawn again; ``accounts_reused`` says
   how many). An AMLworld self-transfer stays a self-transfer.
4. *Time.* An attempt keeps its internal timing to the minute (offsets from its first
   transaction) and its first transaction's time of day (AMLworld times read as UTC, as
   the ``amlworld`` source reads them); it is moved by a whole number of days, drawn
   uniformly among the shifts that keep the whole attempt inside the window.
5. *Amounts.* ``Amount Paid`` in ``Payment Currency`` -> USD with :data:`UNITS_PER_USD`
   (rough rates of the AMLworld era, fixed; the medians of ``Amount Paid`` per currency in
   HI-Medium agree with them within ~15 % for the frequent currencies) -> the sending
   account's currency with the simulator's ``FX_PER_USD``, rounded to cents. AMLworld
   attempts move ~10 k USD per transaction (median), far more than the realistic world's
   own laundering (~600 USD): that is the other generator's choice and is kept.
6. *Channels.* ``Payment Format`` -> our channels (:data:`CHANNEL_OF`): ACH -> ach,
   Wire -> wire, Cheque -> p2p, Credit Card -> card, Cash -> cash_deposit,
   Reinvestment -> ach, Bitcoin -> wire. (The Medium Patterns files are almost all ACH:
   HI-Medium has 22,740 ACH and 3 Bitcoin lines.)
7. *Columns.* Currency, banks, countries, jurisdiction (sender's country) and region
   (sender's) come from the mapped accounts exactly as the simulator's ``_frame`` builds
   them; ``merchant`` is null (persons are not merchants). ``label`` = 1, ``typology`` as
   the amlworld source gives it, ``instance_id`` = ``amlworld-<attempt>``, ``event_id`` =
   ``amlworld-<attempt>-<row in the attempt, from 0>``. Normal rows keep their ids.

Output: one parquet in the canonical schema, sorted by ``event_time``; beside it
``<stem>.summary.json`` with the figures :func:`build_mixed` returns. The file is read with
``source=parquet`` and the identity column mapping :func:`parquet_overrides` prints::

    python -m aml_pipeline source=parquet source.path=<file> "source.columns={event_id:event_id,...}"

(``+experiment=quickstart`` cannot be combined with ``source=parquet``: it sets
``source.n_accounts``, which a tabular source does not have. Its other choices, the default
plan, LightGBM and inverse-frequency weights, are the defaults of ``conf/config.yaml``.)
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aml_pipeline.schema import CANONICAL_COLUMNS, conform  # noqa: E402
from aml_pipeline.sources.amlworld import COLUMN_NAMES, read_patterns  # noqa: E402
from aml_pipeline.sources.synthetic import (  # noqa: E402
    COUNTRIES,
    CURRENCIES,
    DAY,
    FX_PER_USD,
    PERSON,
    SyntheticSource,
    _build_world,
)

#: Share of laundering rows in the mix when ``max_attempts`` is not given.
TARGET_RATE = 0.005
#: Passed to the simulator; its own laundering is dropped, so this only keeps the call
#: identical to the quickstart's world (normal traffic is drawn before laundering).
WORLD_LAUNDERING_RATE = 0.006
WORLD_START = "2025-01-01T00:00:00Z"
WORLD_JURISDICTION = "US"

#: Units of each AMLworld currency per US dollar: rough, fixed rates of the AMLworld era.
UNITS_PER_USD = {
    "US Dollar": 1.0, "Euro": 0.85, "UK Pound": 0.77, "Swiss Franc": 0.92, "Yuan": 7.0, "Yen": 105.0,
    "Rupee": 73.0, "Ruble": 77.0, "Canadian Dollar": 1.3, "Australian Dollar": 1.4, "Mexican Peso": 21.0,
    "Shekel": 3.4, "Brazil Real": 5.6, "Saudi Riyal": 3.75, "Bitcoin": 1 / 11_500,
}
#: AMLworld ``Payment Format`` -> our channel.
CHANNEL_OF = {
    "ACH": "ach", "Wire": "wire", "Cheque": "p2p", "Credit Card": "card", "Cash": "cash_deposit",
    "Reinvestment": "ach", "Bitcoin": "wire",
}
AMLWORLD_TIME = "%Y/%m/%d %H:%M"


# ------------------------------------------------------------------------- inputs
def load_attempts(patterns: Path) -> pl.DataFrame:
    """One row per transaction line: attempt number, typology, row in the attempt and the fields used.

    ``row`` counts from 0 in file order inside the attempt (after read_patterns' rule that a
    line listed in several attempts belongs to the first). Unknown currencies or payment
    formats raise, naming the value.
    """
    k = {name: f"_k{i}" for i, name in enumerate(COLUMN_NAMES)}
    rows = read_patterns(patterns).select(
        pl.col("_instance").str.extract(r"-(\d+)$", 1).cast(pl.Int64).alias("attempt"),
        pl.col("_typology").alias("typology"),
        pl.col(k["Timestamp"]).str.strptime(pl.Datetime("us"), AMLWORLD_TIME).alias("t"),
        (pl.col(k["From Bank"]) + ":" + pl.col(k["From Account"])).alias("src_key"),
        (pl.col(k["To Bank"]) + ":" + pl.col(k["To Account"])).alias("dst_key"),
        pl.col(k["Amount Paid"]).alias("amount_paid"),
        pl.col(k["Payment Currency"]).alias("paid_currency"),
        pl.col(k["Payment Format"]).alias("format"),
    ).with_columns(pl.int_range(pl.len()).over("attempt").alias("row"))
    for column, table in (("paid_currency", UNITS_PER_USD), ("format", CHANNEL_OF)):
        unknown = sorted(set(rows[column].unique().to_list()) - set(table))
        if unknown:
            raise ValueError(f"{patterns}: {column} {unknown[0]!r} has no entry in "
                             f"{'UNITS_PER_USD' if column == 'paid_currency' else 'CHANNEL_OF'}")
    if rows["t"].null_count() or rows["amount_paid"].null_count():
        raise ValueError(f"{patterns}: a transaction line has an unreadable time or amount")
    return rows


def simulate_world(seed: int, n_accounts: int, days: int) -> tuple[pl.DataFrame, object]:
    """The realistic world's normal rows and its accounts' attributes (checked against the rows)."""
    source = SyntheticSource(n_accounts=n_accounts, days=days, start=WORLD_START, seed=seed,
                             laundering_rate=WORLD_LAUNDERING_RATE, jurisdiction=WORLD_JURISDICTION,
                             realism="realistic")
    normal = source.read().filter(pl.col("label") == 0)
    world = _build_world(np.random.default_rng(seed), n_accounts, days, COUNTRIES.index(WORLD_JURISDICTION),
                         np.datetime64(WORLD_START[:10]))
    idx = normal["src_account"].str.slice(1).cast(pl.Int64).to_numpy()
    country = np.asarray(COUNTRIES)[world.country[idx]]
    bank = np.char.add("B", np.char.zfill(world.bank[idx].astype(str), 3))
    if not (np.array_equal(country, normal["src_country"].to_numpy())
            and np.array_equal(bank, normal["src_bank"].to_numpy())):
        raise RuntimeError("the rebuilt accounts do not match the simulated rows: SyntheticSource.read no longer "
                           "builds its accounts first from default_rng(seed); update simulate_world")
    return normal, world


# ------------------------------------------------------------------------- pure steps
def to_usd(rows: pl.DataFrame) -> np.ndarray:
    """``Amount Paid`` in US dollars at the fixed rates of :data:`UNITS_PER_USD`."""
    return rows["amount_paid"].to_numpy() / rows["paid_currency"].replace_strict(UNITS_PER_USD).to_numpy()


def allocate(counts: dict[str, int], total: int) -> dict[str, int]:
    """Split ``total`` between typologies in proportion to ``counts`` (largest remainder, capped)."""
    names = sorted(counts)
    have = np.array([counts[t] for t in names])
    exact = have / have.sum() * total
    n = np.floor(exact).astype(np.int64)
    n[np.argsort(-(exact - n), kind="stable")[:total - n.sum()]] += 1
    return {t: int(min(k, c)) for t, k, c in zip(names, n, have)}


def choose_attempts(rng: np.random.Generator, rows: pl.DataFrame, n_normal: int,
                    max_attempts: int | None) -> list[int]:
    """Attempt numbers to inject: ~TARGET_RATE of all rows, or ``max_attempts``, typologies in file proportions."""
    per = rows.group_by("attempt").agg(pl.col("typology").first(), pl.len().alias("n")).sort("attempt")
    if max_attempts is None:
        want_rows = TARGET_RATE * n_normal / (1.0 - TARGET_RATE)
        total = max(1, round(want_rows / per["n"].mean()))
    else:
        total = int(max_attempts)
    total = min(total, per.height)
    counts = dict(per.group_by("typology").len().iter_rows())
    chosen = []
    for typology, k in allocate(counts, total).items():  # eight typologies
        ids = per.filter(pl.col("typology") == typology)["attempt"].to_numpy()
        chosen.extend(rng.choice(ids, size=k, replace=False).tolist())
    return sorted(int(a) for a in chosen)


def map_accounts(rng: np.random.Generator, rows: pl.DataFrame, candidates: np.ndarray,
                 country: np.ndarray) -> tuple[dict[str, int], int]:
    """AMLworld account -> world account number, one to one while candidates last; also the
    number reused.

    An attempt is domestic: it draws a country (weighted by the active persons there) and
    its new accounts come from that country's persons, as most of the world's own laundering
    and normal transfers stay in one country. Random accounts from anywhere would make an
    attempt cross-border hop after hop, a give-away of the mixing rather than of the money
    flow. An account already mapped by an earlier attempt keeps its account.
    """
    pools = {int(c): list(rng.permutation(candidates[country[candidates] == c]))
             for c in np.unique(country[candidates])}
    weights = np.array([len(pools[c]) for c in sorted(pools)], dtype=float)
    spare = list(rng.permutation(candidates))
    mapping: dict[str, int] = {}
    used: set[int] = set()
    reused = 0
    for _, attempt in rows.sort("attempt", "row").group_by("attempt", maintain_order=True):
        home = sorted(pools)[int(rng.choice(len(weights), p=weights / weights.sum()))]
        keys = attempt.select(pl.concat_list("src_key", "dst_key").alias("k")).explode("k")["k"].unique(maintain_order=True)
        for key in keys.to_list():
            if key in mapping:
                continue
            pool = pools[home]
            while pool and pool[-1] in used:
                pool.pop()
            while spare and spare[-1] in used:
                spare.pop()
            if pool or spare:
                account = int((pool or spare).pop())
            else:  # more accounts than active persons: draw again
                account, reused = int(rng.choice(candidates)), reused + 1
            used.add(account)
            mapping[key] = account
    return mapping, reused


def place_in_window(rng: np.random.Generator, rows: pl.DataFrame, days: int) -> np.ndarray:
    """Seconds since the window start for every row: whole-day shift per attempt, offsets kept."""
    secs = (rows["t"].dt.epoch("s")).to_numpy()
    attempt = rows["attempt"].to_numpy()
    ids, inv = np.unique(attempt, return_inverse=True)
    first = np.full(len(ids), np.iinfo(np.int64).max)
    last = np.full(len(ids), np.iinfo(np.int64).min)
    np.minimum.at(first, inv, secs)
    np.maximum.at(last, inv, secs)
    time_of_day = first % DAY
    # latest start day d with d*DAY + time_of_day + span <= window end - 1 s
    max_day = (days * DAY - 1 - time_of_day - (last - first)) // DAY
    if (max_day < 0).any():
        raise ValueError(f"an attempt spans more than the {days}-day window")
    day = np.floor(rng.random(len(ids)) * (max_day + 1)).astype(np.int64)
    return day[inv] * DAY + time_of_day[inv] + (secs - first[inv])


def laundering_rows(rows: pl.DataFrame, mapping: dict[str, int], t: np.ndarray, world,
                    start_s: int, acct_width: int, scale: float = 1.0) -> pl.DataFrame:
    """The injected rows in the canonical schema, every account attribute from the world;
    USD amounts multiplied by ``scale`` (1: AMLworld's own)."""
    src = np.array([mapping[k] for k in rows["src_key"].to_list()], dtype=np.int64)
    dst = np.array([mapping[k] for k in rows["dst_key"].to_list()], dtype=np.int64)
    amount = np.maximum(np.round(to_usd(rows) * scale * FX_PER_USD[world.country[src]], 2), 0.01)
    countries, currencies = np.asarray(COUNTRIES), np.asarray(CURRENCIES)

    def acct(a: np.ndarray) -> list[str]:
        return [f"A{x:0{acct_width}d}" for x in a]

    src_country = countries[world.country[src]]
    return conform(pl.DataFrame({
        "event_id": [f"amlworld-{a}-{r:03d}" for a, r in zip(rows["attempt"], rows["row"])],
        "event_time": pl.Series((t + start_s) * 1_000_000).cast(pl.Datetime("us", "UTC")),
        "src_account": acct(src),
        "dst_account": acct(dst),
        "amount": amount,
        "currency": currencies[world.country[src]],
        "channel": rows["format"].replace_strict(CHANNEL_OF),
        "src_bank": [f"B{b:03d}" for b in world.bank[src]],
        "dst_bank": [f"B{b:03d}" for b in world.bank[dst]],
        "src_country": src_country,
        "dst_country": countries[world.country[dst]],
        "jurisdiction": src_country,
        "region": [f"{c}-{r}" for c, r in zip(src_country, world.region[src])],
        "label": pl.Series(np.ones(len(src), dtype=np.int8)),
        "typology": rows["typology"],
        "instance_id": "amlworld-" + rows["attempt"].cast(pl.String),
    }), keep_extra=False)


# ------------------------------------------------------------------------- the build
def build_mixed(patterns: Path, seed: int, n_accounts: int, days: int, out: Path,
                max_attempts: int | None = None, median_usd: float | None = None) -> dict:
    """Write the mix to ``out`` (parquet) and ``<stem>.summary.json``; return the summary.

    ``median_usd``: multiply every injected amount by one factor so that their median is this
    many USD (ratios inside and between attempts kept). AMLworld's ~10 k USD hops stand out
    against the world's transfers by size alone; rescaled to the world's mid-size transfers
    (~700 USD), only how the money moves can tell them apart.
    """
    patterns, out = Path(patterns), Path(out)
    normal, world = simulate_world(seed, n_accounts, days)
    rows = load_attempts(patterns)
    rng = np.random.default_rng([seed, 0xA3])  # the mix's own stream: the world is not disturbed

    available = rows["attempt"].n_unique()
    chosen = choose_attempts(rng, rows, normal.height, max_attempts)
    rows = rows.filter(pl.col("attempt").is_in(chosen)).sort("attempt", "row")
    active = np.unique(np.concatenate([normal[c].str.slice(1).cast(pl.Int64).to_numpy()
                                       for c in ("src_account", "dst_account")]))
    persons = active[world.kind[active] == PERSON]
    mapping, reused = map_accounts(rng, rows, persons, world.country)
    t = place_in_window(rng, rows, days)
    start_s = int(datetime.fromisoformat(WORLD_START.replace("Z", "+00:00")).astimezone(timezone.utc).timestamp())
    acct_width = normal["src_account"].str.len_chars().max() - 1
    median = float(np.median(to_usd(rows)))
    scale = 1.0 if median_usd is None or median <= 0 else float(median_usd) / median
    bad = laundering_rows(rows, mapping, t, world, start_s, acct_width, scale)

    mixed = pl.concat([normal, bad]).sort("event_time", maintain_order=True)
    if mixed["event_id"].n_unique() != mixed.height:
        raise AssertionError("event ids are not unique")
    out.parent.mkdir(parents=True, exist_ok=True)
    mixed.write_parquet(out)

    per = rows.group_by("attempt").agg(pl.col("typology").first())
    summary = {
        "patterns": str(patterns), "seed": seed, "n_accounts": n_accounts, "days": days,
        "rows": mixed.height, "normal_rows": normal.height, "positives": bad.height,
        "positive_rate": round(bad.height / mixed.height, 5),
        "attempts": len(chosen), "attempts_in_file": available,
        "attempts_per_typology": dict(sorted(per.group_by("typology").len().iter_rows())),
        "rows_per_typology": dict(sorted(rows.group_by("typology").len().iter_rows())),
        "accounts_mapped": len(mapping), "active_persons": int(len(persons)), "accounts_reused": reused,
        "amount_usd_median": round(median, 2), "amount_scale": round(scale, 6),
        "out": str(out),
    }
    out.with_name(out.stem + ".summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def parquet_overrides(path: Path) -> list[str]:
    """Hydra overrides reading a mix with ``source=parquet``: every canonical column mapped to itself."""
    columns = ",".join(f"{c}:{c}" for c in CANONICAL_COLUMNS)
    return ["source=parquet", f"source.path={path}", f"source.columns={{{columns}}}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patterns", type=Path, required=True, help="an AMLworld *_Patterns.txt")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--accounts", type=int, default=14_000)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "amlworld_mix" / "seed1.parquet")
    ap.add_argument("--max-attempts", type=int, default=None)
    args = ap.parse_args()
    summary = build_mixed(args.patterns, args.seed, args.accounts, args.days, args.out, args.max_attempts)
    print(json.dumps(summary, indent=2))
    print("\nrun the pipeline on it:\n  python -m aml_pipeline " +
          " ".join(f'"{o}"' if "{" in o else o for o in parquet_overrides(args.out)) + " name=amlworld_mix")


if __name__ == "__main__":
    main()
