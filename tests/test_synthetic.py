"""The synthetic simulator: schema, determinism, labelled typologies and their shapes."""

from __future__ import annotations

import math
import re

import polars as pl
import pytest
from omegaconf import OmegaConf

from aml_pipeline.errors import ConfigError
from aml_pipeline.schema import CANONICAL_COLUMNS
from aml_pipeline.sources.synthetic import COUNTRIES, CURRENCIES, TYPOLOGIES, SyntheticSource

SMALL = dict(n_accounts=2000, days=30)


@pytest.fixture(scope="module")
def frame() -> pl.DataFrame:
    return SyntheticSource(**SMALL).read()


@pytest.fixture(scope="module")
def dense() -> pl.DataFrame:
    """Small world with a higher laundering rate: enough instances for shape statistics."""
    return SyntheticSource(**SMALL, laundering_rate=0.02, seed=3).read()


def positives(frame: pl.DataFrame, typology: str | None = None) -> pl.DataFrame:
    pos = frame.filter(pl.col("label") == 1)
    return pos if typology is None else pos.filter(pl.col("typology") == typology)


# ----------------------------------------------------------------------------- schema
def test_schema_is_exactly_canonical(frame):
    assert list(frame.schema.items()) == list(CANONICAL_COLUMNS.items())
    assert not [c for c in frame.columns if c.startswith(("raw:", "_source_"))]
    assert frame.schema["event_time"] == pl.Datetime("us", "UTC")


def test_required_columns_filled_and_consistent(frame):
    for col in ("event_id", "event_time", "src_account", "dst_account", "amount", "currency",
                "channel", "src_bank", "dst_bank", "src_country", "dst_country", "jurisdiction",
                "region", "label"):
        assert frame[col].null_count() == 0, col
    assert frame["src_account"].str.contains(r"^A\d{6}$").all()
    assert frame["src_bank"].str.contains(r"^B\d{3}$").all()
    assert (frame["jurisdiction"] == frame["src_country"]).all()
    currency = dict(zip(COUNTRIES, CURRENCIES))
    assert (frame["src_country"].replace_strict(currency) == frame["currency"]).all()
    assert frame.select(pl.col("region").str.starts_with(pl.col("src_country")).all()).item()
    assert frame["region"].str.contains(r"^[A-Z]{2}-[1-5]$").all()
    merchant = frame.filter(pl.col("merchant").is_not_null())
    assert merchant.height > 0 and (merchant["merchant"] == merchant["dst_account"]).all()
    assert set(frame["channel"].unique()) <= {"card", "wire", "ach", "p2p", "cash_deposit", "salary"}


def test_amounts_positive_finite_in_cents(frame):
    amount = frame["amount"]
    assert amount.is_finite().all() and (amount > 0).all()
    assert ((amount * 100).round(0) - amount * 100).abs().max() < 1e-6


def test_event_time_utc_sorted_inside_window_whole_seconds(frame):
    t = frame["event_time"]
    assert t.dtype == pl.Datetime("us", "UTC")
    assert t.is_sorted()
    start = pl.datetime(2025, 1, 1, time_zone="UTC")
    bounds = frame.select((pl.col("event_time") >= start).all().alias("after_start"),
                          (pl.col("event_time") < start + pl.duration(days=30)).all().alias("before_end"))
    assert bounds.row(0) == (True, True)
    assert (t.dt.microsecond() == 0).all()


def test_event_ids_unique_and_follow_time(frame):
    ids = frame["event_id"]
    assert ids.n_unique() == frame.height
    assert ids.str.contains(r"^synthetic-\d+$").all()
    assert ids.is_sorted()
    assert ids[0] == "synthetic-0000000"


def test_volume_per_account_day(frame):
    assert 0.45 <= frame.height / (2000 * 30) <= 0.65


# ----------------------------------------------------------------------------- determinism
def test_same_parameters_give_identical_parquet_bytes(tmp_path, frame):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    frame.write_parquet(a)
    SyntheticSource(**SMALL).read().write_parquet(b)
    assert a.read_bytes() == b.read_bytes()


def test_another_seed_gives_other_data(tmp_path, frame):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    frame.write_parquet(a)
    SyntheticSource(**SMALL, seed=43).read().write_parquet(b)
    assert a.read_bytes() != b.read_bytes()


# ----------------------------------------------------------------------------- labels
def test_all_ten_typologies_present_with_ids(frame):
    pos = positives(frame)
    assert set(pos["typology"].unique()) == set(TYPOLOGIES)
    assert pos["typology"].null_count() == 0
    assert pos.select(
        (pl.col("instance_id") == pl.lit("synthetic-") + pl.col("typology") + "-"
         + pl.col("instance_id").str.extract(r"-(\d+)$")).all()
    ).item()


def test_negatives_have_no_typology(frame):
    neg = frame.filter(pl.col("label") == 0)
    assert neg.height + positives(frame).height == frame.height
    assert neg["typology"].null_count() == neg.height
    assert neg["instance_id"].null_count() == neg.height


def test_instances_have_sensible_sizes(dense):
    sizes = positives(dense).group_by("instance_id").len()["len"]
    assert sizes.min() >= 3 and sizes.max() <= 20


def test_zero_weight_removes_typology():
    mix = {t: 1.0 for t in TYPOLOGIES} | {"cycle": 0.0, "structuring": 0}
    pos = positives(SyntheticSource(**SMALL, typology_mix=mix).read())
    assert set(pos["typology"].unique()) == set(TYPOLOGIES) - {"cycle", "structuring"}


def test_mix_naming_some_typologies_only_and_omegaconf_mapping():
    mix = OmegaConf.create({"cycle": 1.0, "fan_in": 2.0})
    pos = positives(SyntheticSource(**SMALL, typology_mix=mix).read())
    counts = dict(pos.group_by("typology").agg(pl.col("instance_id").n_unique()).iter_rows())
    assert set(counts) == {"cycle", "fan_in"}
    assert counts["fan_in"] > counts["cycle"]


def test_laundering_fraction_close_to_rate(dense):
    rate = positives(dense).height / dense.height
    assert 0.014 <= rate <= 0.026


# ----------------------------------------------------------------------------- shapes
def test_structuring_stays_below_threshold():
    frame = SyntheticSource(**SMALL, reporting_threshold=5000.0,
                            typology_mix={"structuring": 1.0}, laundering_rate=0.01).read()
    amount = positives(frame, "structuring")["amount"]
    assert amount.len() >= 20
    assert (amount < 5000.0).all() and (amount >= 0.85 * 5000.0).all()


def test_cycle_instances_form_rings(dense):
    cycles = positives(dense, "cycle").sort("event_id")
    assert cycles["instance_id"].n_unique() >= 3
    for _, inst in cycles.group_by("instance_id"):
        assert set(inst["src_account"]) == set(inst["dst_account"])
        assert inst["src_account"].n_unique() == inst.height  # every node sends exactly once
        # following the money from the earliest hop visits the ring in time order, amounts decaying
        hops = dict(zip(inst["src_account"], inst["dst_account"]))
        node = inst["src_account"][0]
        path = []
        for _ in range(inst.height):
            path.append(node)
            node = hops[node]
        assert node == inst["src_account"][0] and path == inst["src_account"].to_list()
        assert inst["amount"].is_sorted(descending=True)


def test_scatter_gather_and_pass_through_shapes(dense):
    for _, inst in positives(dense, "scatter_gather").group_by("instance_id"):
        assert inst["src_account"].n_unique() == inst.height // 2 + 1  # source + intermediaries
        assert inst["dst_account"].n_unique() == inst.height // 2 + 1  # intermediaries + sink
    compared = 0
    for _, inst in positives(dense, "pass_through").group_by("instance_id"):
        inst = inst.sort("event_id")
        mule = (set(inst["dst_account"]) & set(inst["src_account"])).pop()
        into = inst.filter(pl.col("dst_account") == mule)
        out = inst.filter(pl.col("src_account") == mule)
        assert into.height == out.height
        same_currency = into["currency"] == out["currency"]  # a cross-border leg changes currency
        ratio = (out["amount"] / into["amount"]).filter(same_currency)
        assert (ratio >= 0.89).all() and (ratio <= 0.99).all()
        compared += ratio.len()
        lag = (out["event_time"] - into["event_time"]).dt.total_seconds()
        assert (lag > 0).all() and (lag <= 9 * 3600).all()
    assert compared >= 10


def test_stack_layers_are_fully_connected(dense):
    for _, inst in positives(dense, "stack").group_by("instance_id"):
        middle = set(inst["src_account"]) & set(inst["dst_account"])
        first = set(inst["src_account"]) - middle
        last = set(inst["dst_account"]) - middle
        assert inst.height == len(first) * len(middle) + len(middle) * len(last)


def test_merchants_have_high_in_degree(frame):
    indeg = (frame.filter(pl.col("src_account") != pl.col("dst_account"))
             .group_by("dst_account")
             .agg(pl.col("src_account").n_unique().alias("payers"),
                  pl.col("merchant").is_not_null().any().alias("is_merchant")))
    med = dict(indeg.group_by("is_merchant").agg(pl.col("payers").median()).iter_rows())
    assert med[True] >= 10 * med[False]
    top = indeg.sort("payers", descending=True).head(10)
    assert top["is_merchant"].all()


def test_laundering_accounts_also_transact_normally(dense):
    pos, neg = positives(dense), dense.filter(pl.col("label") == 0)
    bad = set(pos["src_account"]) | set(pos["dst_account"])
    normal = set(neg["src_account"]) | set(neg["dst_account"])
    assert len(bad & normal) >= 0.95 * len(bad)


def test_laundering_amounts_overlap_normal_ones(dense):
    neg = dense.filter(pl.col("label") == 0)["amount"]
    lo, hi = neg.quantile(0.05), neg.quantile(0.995)
    pos = positives(dense)["amount"]
    assert ((pos >= lo) & (pos <= hi)).mean() >= 0.9


# ----------------------------------------------------------------------------- config
def test_metadata_and_describe():
    src = SyntheticSource(**SMALL)
    assert src.name == "synthetic" and src.has_labels
    text = src.describe()
    assert "\n" not in text and "2000" in text and "30" in text and "seed=42" in text


@pytest.mark.parametrize("kwargs, key", [
    (dict(typology_mix={"fan-in": 1.0}), "source.typology_mix"),
    (dict(typology_mix={t: 0.0 for t in TYPOLOGIES}), "source.typology_mix"),
    (dict(typology_mix={"cycle": -1.0}), "source.typology_mix.cycle"),
    (dict(typology_mix={"cycle": math.nan}), "source.typology_mix.cycle"),
    (dict(laundering_rate=0.0), "source.laundering_rate"),
    (dict(laundering_rate=0.5), "source.laundering_rate"),
    (dict(n_accounts=199), "source.n_accounts"),
    (dict(n_accounts=2000.5), "source.n_accounts"),
    (dict(days=0), "source.days"),
    (dict(start="first of january"), "source.start"),
    (dict(reporting_threshold=-1.0), "source.reporting_threshold"),
    (dict(seed=-1), "source.seed"),
    (dict(jurisdiction="XX"), "source.jurisdiction"),
])
def test_bad_config_raises_naming_the_key(kwargs, key):
    src = SyntheticSource(**{**SMALL, **kwargs})  # the constructor only stores
    with pytest.raises(ConfigError) as exc:
        src.read()
    message = str(exc.value)
    assert message.startswith(key) and "\n" not in message


def test_unknown_typology_message_lists_allowed():
    with pytest.raises(ConfigError, match=re.escape("unknown typology 'fan-in'; allowed: bipartite, cycle")):
        SyntheticSource(typology_mix={"fan-in": 1.0}).read()


# ----------------------------------------------------------------------------- full size
def test_default_size_volume_and_rate():
    """The documented defaults: ~1M rows (0.55 per account-day), label rate ~0.004."""
    frame = SyntheticSource().read()
    assert 0.85e6 <= frame.height <= 1.15e6
    rate = frame["label"].mean()
    assert 0.004 * 0.7 <= rate <= 0.004 * 1.3
    assert frame["event_id"].n_unique() == frame.height
