"""The realistic world (``source.realism: realistic``): no raw column gives laundering away,
every typology has legitimate look-alikes, and the simple world is untouched."""

from __future__ import annotations

import hashlib

import polars as pl
import pytest

from aml_pipeline.errors import ConfigError
from aml_pipeline.sources.synthetic import TYPOLOGIES, SyntheticSource

SMALL = dict(n_accounts=2000, days=30)
#: fingerprint() of the simple world at SMALL, taken before the realistic world existed.
SIMPLE_FINGERPRINT = "d864d78a6222e36643fd88d3f12d87bbf32a4a09d63fea3313de8f2b30eaeb62"
#: ~150k events: the size at which the single-column check runs.
MEDIUM = dict(n_accounts=4000, days=60, laundering_rate=0.006)


@pytest.fixture(scope="module")
def world() -> pl.DataFrame:
    return SyntheticSource(**MEDIUM, realism="realistic").read()


@pytest.fixture(scope="module")
def dense() -> pl.DataFrame:
    """A small world with many instances, for shape statistics."""
    return SyntheticSource(**SMALL, laundering_rate=0.02, seed=3, realism="realistic").read()


def positives(frame: pl.DataFrame, typology: str | None = None) -> pl.DataFrame:
    pos = frame.filter(pl.col("label") == 1)
    return pos if typology is None else pos.filter(pl.col("typology") == typology)


def transfers(frame: pl.DataFrame) -> pl.DataFrame:
    """Legitimate account-to-account transfers (no card, salary or cash)."""
    return frame.filter((pl.col("label") == 0) & pl.col("channel").is_in(["p2p", "ach", "wire"]))


# ----------------------------------------------------------------------------- the simple world
def fingerprint(frame: pl.DataFrame) -> str:
    """SHA-256 of every value (numbers as their float64/int64 bytes, text as UTF-8), so it
    does not depend on how a polars version formats a file."""
    h = hashlib.sha256()
    for name, col in zip(frame.columns, frame.get_columns()):
        h.update(name.encode())
        if col.dtype == pl.String:
            h.update("\x1f".join("\x00" if v is None else v for v in col.to_list()).encode())
        elif col.dtype == pl.Float64:
            h.update(col.to_numpy().tobytes())
        else:
            h.update(col.to_physical().cast(pl.Int64).to_numpy().tobytes())
    return h.hexdigest()


def test_simple_world_is_unchanged():
    """Fingerprint of the simple world taken before the realistic one existed."""
    frame = SyntheticSource(**SMALL).read()
    assert frame.height == 33_028
    assert fingerprint(frame) == SIMPLE_FINGERPRINT
    assert SyntheticSource(**SMALL, realism="simple").read().equals(frame)


def test_realism_composes_from_config_and_defaults_to_simple(compose_cfg):
    from aml_pipeline.build import build

    assert compose_cfg([]).source.realism == "simple"
    src = build(compose_cfg(["source.realism=realistic"]).source, "source")
    assert src.realism == "realistic" and "realism=realistic" in src.describe()


def test_realism_is_validated_naming_the_key():
    with pytest.raises(ConfigError) as exc:
        SyntheticSource(**SMALL, realism="real").read()
    message = str(exc.value)
    assert message.startswith("source.realism") and "simple, realistic" in message


def test_realistic_is_deterministic_per_seed(tmp_path, dense):
    a, b, c = tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet"
    dense.write_parquet(a)
    SyntheticSource(**SMALL, laundering_rate=0.02, seed=3, realism="realistic").read().write_parquet(b)
    SyntheticSource(**SMALL, laundering_rate=0.02, seed=4, realism="realistic").read().write_parquet(c)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


# ----------------------------------------------------------------------------- labels
def test_label_rate_close_to_laundering_rate(world, dense):
    assert 0.006 * 0.85 <= world["label"].mean() <= 0.006 * 1.15
    assert 0.02 * 0.85 <= dense["label"].mean() <= 0.02 * 1.15


def test_every_typology_present_with_ids(world):
    pos = positives(world)
    assert set(pos["typology"].unique()) == set(TYPOLOGIES)
    assert pos.select((pl.col("instance_id") == pl.lit("synthetic-") + pl.col("typology") + "-"
                       + pl.col("instance_id").str.extract(r"-(\d+)$")).all()).item()
    neg = world.filter(pl.col("label") == 0)
    assert neg["typology"].null_count() == neg.height == neg["instance_id"].null_count()


def test_launderers_lead_ordinary_lives(world):
    """Laundering accounts also get salaries and pay by card, like everyone else (the
    ones that do not pay by card are front companies)."""
    pos, neg = positives(world), world.filter(pl.col("label") == 0)
    bad = set(pos["src_account"]) | set(pos["dst_account"])
    carders = set(neg.filter(pl.col("channel") == "card")["src_account"])
    paid = set(neg.filter(pl.col("channel") == "salary")["dst_account"])
    persons_bad = bad & carders
    assert len(persons_bad) >= 0.8 * len(bad)
    assert len(persons_bad & paid) >= 0.7 * len(persons_bad)


# ----------------------------------------------------------------------------- no single column
def raw_columns(frame: pl.DataFrame) -> pl.DataFrame:
    cents = (pl.col("amount") * 100).round(0).cast(pl.Int64)
    return frame.select(
        "event_time", "label", "amount",
        hour=pl.col("event_time").dt.hour(),
        weekday=pl.col("event_time").dt.weekday(),
        channel="channel", currency="currency", src_country="src_country",
        dst_country="dst_country", jurisdiction="jurisdiction", src_bank="src_bank",
        dst_bank="dst_bank", region="region",
        cross_border=(pl.col("src_country") != pl.col("dst_country")).cast(pl.Int8),
        whole_units=(cents % 100 == 0).cast(pl.Int8),
        round_10=(cents % 1_000 == 0).cast(pl.Int8),
        round_100=(cents % 10_000 == 0).cast(pl.Int8),
        round_1000=(cents % 100_000 == 0).cast(pl.Int8),
    )


CATEGORICAL = ("channel", "currency", "src_country", "dst_country", "jurisdiction", "src_bank",
               "dst_bank", "region")
NUMERIC = ("amount", "hour", "weekday", "cross_border", "whole_units", "round_10", "round_100",
           "round_1000")


def test_no_single_raw_column_separates_laundering(world):
    """A depth-2 tree per raw column, trained on the first 60 % of time, tested on the rest.

    Categories are target-encoded on the training part (the tree can then pick any set of
    categories), so this is the strongest single-column model of its size.
    """
    from sklearn.metrics import average_precision_score
    from sklearn.tree import DecisionTreeClassifier

    raw = raw_columns(world)
    lo, hi = raw["event_time"].min(), raw["event_time"].max()
    cut = lo + (hi - lo) * 0.6
    train, test = raw.filter(pl.col("event_time") < cut), raw.filter(pl.col("event_time") >= cut)
    assert test["label"].sum() >= 200
    scores = {}
    for col in CATEGORICAL + NUMERIC:
        if col in CATEGORICAL:
            rate = train.group_by(col).agg(pl.col("label").mean().alias("r"))
            enc = lambda f: f.join(rate, on=col, how="left")["r"].fill_null(0.0).to_numpy()  # noqa: E731
            x_train, x_test = enc(train), enc(test)
        else:
            x_train, x_test = train[col].to_numpy(), test[col].to_numpy()
        tree = DecisionTreeClassifier(max_depth=2, random_state=0)
        tree.fit(x_train.reshape(-1, 1).astype(float), train["label"].to_numpy())
        p = tree.predict_proba(x_test.reshape(-1, 1).astype(float))[:, 1]
        scores[col] = average_precision_score(test["label"].to_numpy(), p)
    assert max(scores.values()) < 0.2, scores


def test_laundering_matches_normal_transfers_column_by_column(world):
    """Channel mix, hour of day and roundness of laundering transfers vs normal transfers."""
    raw = raw_columns(world).filter(pl.col("channel").is_in(["p2p", "ach", "wire"]))
    bad, good = raw.filter(pl.col("label") == 1), raw.filter(pl.col("label") == 0)
    # Launderers are mostly persons, normal transfers include many business payments, so
    # the marginals differ somewhat; the rules per kind of sender are the same.
    assert abs(bad["round_10"].mean() - good["round_10"].mean()) < 0.15
    assert abs(bad["cross_border"].mean() - good["cross_border"].mean()) < 0.05
    share = dict(bad["channel"].value_counts(normalize=True).iter_rows())
    assert set(share) == {"p2p", "ach", "wire"} and min(share.values()) >= 0.1
    by_hour = bad["hour"].value_counts(normalize=True)
    assert by_hour.height == 24 and by_hour["proportion"].max() < 0.1  # around the clock


# ----------------------------------------------------------------------------- look-alikes
def test_legitimate_salary_forwarding_within_hours(world):
    """Persons who move 85-100 % of a salary to another account within hours: label 0."""
    salary = world.filter(pl.col("channel") == "salary").select(
        acct="dst_account", t_in="event_time", a_in="amount", c_in="currency")
    out = transfers(world).select(acct="src_account", t_out="event_time", a_out="amount", c_out="currency")
    fwd = (salary.join(out, on="acct")
           .filter((pl.col("t_out") > pl.col("t_in"))
                   & (pl.col("t_out") - pl.col("t_in") <= pl.duration(hours=12))
                   & (pl.col("c_in") == pl.col("c_out"))
                   & (pl.col("a_out") >= 0.85 * pl.col("a_in")) & (pl.col("a_out") <= pl.col("a_in"))))
    assert fwd["acct"].n_unique() >= 100


def test_legitimate_cycles_of_two_and_three(world):
    edges = transfers(world).select(a="src_account", b="dst_account", t="event_time")
    two = (edges.join(edges.rename({"a": "b", "b": "a2", "t": "t2"}), on="b")
           .filter((pl.col("a2") == pl.col("a")) & (pl.col("t2") > pl.col("t"))
                   & (pl.col("t2") - pl.col("t") <= pl.duration(days=14))))
    assert two.height >= 50
    three = (edges.join(edges.rename({"a": "b", "b": "c", "t": "t2"}), on="b")
             .filter((pl.col("t2") > pl.col("t")) & (pl.col("c") != pl.col("a")))
             .join(edges.rename({"a": "c", "b": "a3", "t": "t3"}), on="c")
             .filter((pl.col("a3") == pl.col("a")) & (pl.col("t3") > pl.col("t2"))
                     & (pl.col("t3") - pl.col("t") <= pl.duration(days=14))))
    assert three.height >= 20


def test_legitimate_fan_in_of_ten_senders_in_a_day(world):
    daily = (transfers(world)
             .group_by("dst_account", pl.col("event_time").dt.date().alias("day"))
             .agg(pl.col("src_account").n_unique().alias("senders")))
    assert daily.filter(pl.col("senders") >= 10)["dst_account"].n_unique() >= 10


def test_legitimate_fan_out_and_cash_near_threshold(world):
    daily = (transfers(world)
             .group_by("src_account", pl.col("event_time").dt.date().alias("day"))
             .agg(pl.col("dst_account").n_unique().alias("payees")))
    assert daily.filter(pl.col("payees") >= 10)["src_account"].n_unique() >= 10
    near = world.filter((pl.col("label") == 0) & (pl.col("channel") == "cash_deposit")
                        & (pl.col("currency") == "USD") & pl.col("amount").is_between(8500, 9999.99))
    assert near["src_account"].n_unique() >= 10


# ----------------------------------------------------------------------------- laundering shapes
def pass_through_legs(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows of pass-through instances with the role of each: in (to the mule) or out."""
    pt = positives(frame, "pass_through")
    mules = (pt.group_by("instance_id")
             .agg(pl.col("src_account").filter(pl.col("src_account").is_in(pl.col("dst_account").implode()))
                  .first().alias("mule")))
    return pt.join(mules, on="instance_id").with_columns(out=pl.col("src_account") == pl.col("mule"))


def test_partial_forwarding_between_85_and_99_percent(dense):
    legs = pass_through_legs(dense).sort("event_time", "event_id")
    legs = legs.with_columns(
        prev_amount=pl.col("amount").shift(1).over("instance_id"),
        prev_out=pl.col("out").shift(1).over("instance_id"),
        prev_currency=pl.col("currency").shift(1).over("instance_id"),
        lag=(pl.col("event_time") - pl.col("event_time").shift(1)).over("instance_id"))
    hops = legs.filter(pl.col("out") & ~pl.col("prev_out") & (pl.col("currency") == pl.col("prev_currency")))
    ratio = hops["amount"] / hops["prev_amount"]
    assert ratio.len() >= 20
    assert (ratio >= 0.85).all() and (ratio <= 0.99 + 1e-9).all()
    assert ratio.std() > 0.02  # spread over the range, not a constant share
    assert (hops["lag"].dt.total_hours() <= 24).all()  # forwarded within hours, a day at most


#: The fewest transactions a whole instance of each typology has.
MIN_ROWS = dict(fan_in=6, fan_out=6, cycle=3, scatter_gather=6, gather_scatter=4, bipartite=4,
                stack=8, random=5, structuring=7, pass_through=4)


def test_instances_are_cut_at_the_window_edges(world):
    """Instances smaller than any whole one lie at an edge of the window: their other hops
    happened before it started or after it ended."""
    start = pl.datetime(2025, 1, 1, time_zone="UTC")
    end = start + pl.duration(days=60)
    sizes = (positives(world).group_by("instance_id", "typology")
             .agg(pl.len().alias("rows"), pl.col("event_time").min().alias("first"),
                  pl.col("event_time").max().alias("last"))
             .with_columns(whole=pl.col("typology").replace_strict(MIN_ROWS, return_dtype=pl.Int64)))
    cut = sizes.filter(pl.col("rows") < pl.col("whole"))
    at_start = cut.filter(pl.col("first") < start + pl.duration(days=8))
    at_end = cut.filter(pl.col("last") >= end - pl.duration(days=8))
    assert at_start.height >= 1 and at_end.height >= 1
    assert at_start.height + at_end.height >= cut.height  # cut only at the edges


def test_cycles_close_and_decay(dense):
    rings = 0
    for _, inst in positives(dense, "cycle").sort("event_time", "event_id").group_by("instance_id"):
        if set(inst["src_account"]) == set(inst["dst_account"]):  # not cut at an edge
            rings += 1
            ratio = inst["amount"].to_numpy()[1:] / inst["amount"].to_numpy()[:-1]
            same = (inst["currency"].to_numpy()[1:] == inst["currency"].to_numpy()[:-1])
            assert ((ratio[same] >= 0.85) & (ratio[same] <= 0.99 + 1e-9)).all()
    assert rings >= 3


def test_fan_in_collector_forwards_what_it_gathered(world):
    seen = 0
    for _, inst in positives(world, "fan_in").group_by("instance_id"):
        collector = inst["dst_account"].mode()[0]
        into = inst.filter(pl.col("dst_account") == collector)
        out = inst.filter(pl.col("src_account") == collector)
        if into.height >= 5 and out.height and into["currency"].n_unique() == 1 \
                and out["currency"].n_unique() == 1 and into["currency"][0] == out["currency"][0]:
            ratio = out["amount"].sum() / into["amount"].sum()
            assert into["src_account"].n_unique() == into.height
            seen += 1
            assert 0.8 <= ratio <= 1.0
    assert seen >= 3


# ----------------------------------------------------------------------------- speed
def test_million_events_in_seconds():
    import time

    t0 = time.perf_counter()
    frame = SyntheticSource(n_accounts=18_000, realism="realistic").read()
    elapsed = time.perf_counter() - t0
    assert frame.height >= 0.9e6
    assert elapsed < 20, elapsed

