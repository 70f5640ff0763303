"""bench/amlworld_mix.py: real AMLworld attempts injected into a small realistic world.

The slice is the first 35 attempts of HI-Medium_Patterns.txt (all eight typologies, 249
transaction lines; tests/data/README.md). One mix of 400 accounts x 21 days with every
attempt is built once for the module (about a second).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.amlworld_mix import (  # noqa: E402
    allocate,
    build_mixed,
    load_attempts,
    parquet_overrides,
    simulate_world,
    to_usd,
)
from aml_pipeline.sources.synthetic import COUNTRIES, FX_PER_USD, PERSON  # noqa: E402
from aml_pipeline.ingest import ingest  # noqa: E402

SLICE = Path(__file__).resolve().parent / "data" / "amlworld" / "HI-Medium_head353_Patterns.txt"
SEED, ACCOUNTS, DAYS = 3, 400, 21


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    out = tmp_path_factory.mktemp("amlworld_mix") / "mix.parquet"
    summary = build_mixed(SLICE, SEED, ACCOUNTS, DAYS, out, max_attempts=100)
    return summary, out, pl.read_parquet(out), load_attempts(SLICE)


@pytest.fixture(scope="module")
def world():
    """The world's normal rows and accounts, simulated afresh (the reference the mix must keep)."""
    return simulate_world(SEED, ACCOUNTS, DAYS)


@pytest.fixture(scope="module")
def injected(mix):
    """Every injected row beside the AMLworld line it came from (joined on attempt and row)."""
    _, _, frame, lines = mix
    bad = frame.filter(pl.col("label") == 1).with_columns(
        pl.col("event_id").str.extract(r"^amlworld-(\d+)-", 1).cast(pl.Int64).alias("attempt"),
        pl.col("event_id").str.extract(r"-(\d+)$", 1).cast(pl.Int64).alias("row"))
    return lines.join(bad, on=["attempt", "row"], how="full", suffix="_mix")


def test_every_attempt_is_present_with_label_and_typology(mix, injected):
    summary, _, frame, lines = mix
    assert summary["attempts"] == 35 and summary["positives"] == lines.height == 249
    assert injected["event_id"].null_count() == 0 and injected["attempt"].null_count() == 0  # nothing lost or added
    assert (injected["label"] == 1).all()
    assert (injected["typology"] == injected["typology_mix"]).all()
    assert (injected["instance_id"] == "amlworld-" + injected["attempt"].cast(pl.String)).all()
    assert set(injected["typology"]) == {"fan_in", "fan_out", "cycle", "scatter_gather", "gather_scatter",
                                         "bipartite", "stack", "random"}
    assert frame["event_id"].n_unique() == frame.height
    assert frame["event_time"].is_sorted()


def test_relative_timing_inside_an_attempt_is_kept(injected):
    offsets = injected.with_columns(
        (pl.col("t") - pl.col("t").min().over("attempt")).alias("was"),
        (pl.col("event_time") - pl.col("event_time").min().over("attempt")).alias("now"))
    assert (offsets["was"] == offsets["now"]).all()
    # moved by whole days: the first transaction keeps its time of day (AMLworld times read as UTC)
    shift = injected["event_time"].dt.replace_time_zone(None) - injected["t"]
    assert (shift.dt.total_seconds() % 86_400 == 0).all()
    seconds = (injected["event_time"].dt.epoch("s") - 1_735_689_600).to_numpy()  # since 2025-01-01T00:00Z
    assert seconds.min() >= 0 and seconds.max() < DAYS * 86_400  # inside the window


def test_accounts_map_one_to_one_onto_active_persons(mix, injected, world):
    _, _, frame, _ = mix
    sides = pl.concat([injected.select(pl.col("src_key").alias("key"), pl.col("src_account").alias("acct")),
                       injected.select(pl.col("dst_key").alias("key"), pl.col("dst_account").alias("acct"))]).unique()
    assert sides.group_by("key").len()["len"].max() == 1  # each AMLworld account -> one world account
    assert sides.group_by("acct").len()["len"].max() == 1  # no two onto the same world account
    idx = sides["acct"].str.slice(1).cast(pl.Int64).to_numpy()
    assert (world[1].kind[idx] == PERSON).all()
    normal = frame.filter(pl.col("label") == 0)
    active = set(normal["src_account"]) | set(normal["dst_account"])
    assert set(sides["acct"]) <= active


def test_attempts_stay_mostly_in_one_country(injected):
    # each attempt draws its new accounts from one country; only accounts shared with an
    # earlier attempt elsewhere can make a hop cross-border
    domestic = (injected["src_country"] == injected["dst_country"]).mean()
    assert domestic >= 0.8, domestic


def test_amounts_and_attributes_follow_the_sender(injected):
    country = injected["src_country"].replace_strict({c: i for i, c in enumerate(COUNTRIES)}).to_numpy()
    expected = to_usd(injected) * FX_PER_USD[country]  # AMLworld currency -> USD -> the sender's currency
    np.testing.assert_allclose(injected["amount"].to_numpy(), expected, rtol=1e-6, atol=0.006)
    assert (injected["channel"] == "ach").all()  # the slice is all ACH
    assert (injected["jurisdiction"] == injected["src_country"]).all()
    assert injected["region"].str.starts_with(injected["src_country"] + "-").all()
    # hand check: line 2 of the file, 5,331.44 US Dollar from 00952:8139F54E0 (attempt 1, row 0)
    first = injected.filter((pl.col("attempt") == 1) & (pl.col("row") == 0))
    fx = FX_PER_USD[COUNTRIES.index(first["src_country"].item())]
    assert first["amount"].item() == pytest.approx(round(5331.44 * fx, 2))


def test_normal_rows_are_the_worlds_own(mix, world):
    _, _, frame, _ = mix
    assert_frame_equal(frame.filter(pl.col("label") == 0), world[0])


def test_reads_back_through_source_parquet_with_nothing_quarantined(mix, compose_cfg):
    _, out, frame, _ = mix
    ing = ingest(compose_cfg(parquet_overrides(out)))
    assert ing.result.rows_quarantined == 0
    assert ing.result.valid.height == frame.height
    assert ing.result.valid["label"].sum() == 249
    assert ing.result.valid.filter(pl.col("label") == 1)["typology"].null_count() == 0


def test_allocate_keeps_file_proportions():
    # exact shares 3, 1.5, 0.5: floors 3, 1, 0 and the one left over to the first largest remainder
    assert allocate({"a": 6, "b": 3, "c": 1}, 5) == {"a": 3, "b": 2, "c": 0}
    assert allocate({"a": 1, "b": 1}, 10) == {"a": 1, "b": 1}  # never more than the file has
