"""No feature may see the future, the arrival order, or the batch it is computed in.

On a generated data set (two weeks of the simulator, plus a few fast 3-cycles and
same-instant bursts so that every feature fires), a plan with every history-based step:

(a) truncating the data at T does not change the features of the events before T;
(b) shuffling the input rows does not change any event's features;
(c) changing the labels of the events at/after T does not change the features of the
    events before T, neither when fitting nor when scoring;
(d) scoring the later events with the earlier ones as history equals scoring everything
    (the streaming contract), also with only ``history_window`` of history;
(e) three consecutive micro-batches, each with all earlier events as history, concatenated,
    equal scoring everything, even when a batch boundary cuts an instant in two.

Comparisons are exact (``assert_frame_equal`` with ``check_exact``), nulls included.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from aml_pipeline.features.plan import FeaturePlan
from aml_pipeline.features.windows import duration_us
from aml_pipeline.schema import conform
from aml_pipeline.sources.synthetic import SyntheticSource

CONFIG = {
    "time": {},
    "amount": {"trailing_window": "24h"},
    "rolling": {"windows": ["1h", "24h"]},
    "graph": {"window": "24h", "max_intermediary_degree": 10},
    "target_encoding": {"columns": ["src_account", "dst_account"], "smoothing": 10.0, "label_delay": "1d"},
    "category_codes": {"columns": ["channel", "currency", "jurisdiction"]},
    "bucketing": {"columns": ["amount"], "n_buckets": 8},
    "flow": {"windows": ["1h", "12h"], "max_inflows": 3, "lookback": "12h", "habit": "12h"},
    "paths": {"window": "24h", "hop_lag": "1h", "max_rows": 3, "max_intermediary_degree": 10},
    "burst": {"windows": ["1h", "24h"], "alike_windows": ["24h"], "max_rows": 3},
    "novelty": {"lookback": "12h", "new_windows": ["1h", "12h"]},
    "structuring": {"windows": ["24h"], "reporting_threshold": 1000.0, "band": 0.5, "cash_channels": ["cash_deposit", "p2p"],
                    "branch_column": "region", "max_rows": 2},
    "cross_border": {"windows": ["24h"], "risk_countries": ["MX", "AE"], "max_rows": 2},
}
T = "event_time"


def exact(left: pl.DataFrame, right: pl.DataFrame) -> None:
    assert_frame_equal(left, right, check_exact=True)


def _extra_patterns(df: pl.DataFrame, seed: int = 11) -> pl.DataFrame:
    """Fast 3-cycles (so cycle3 fires within 24 h) and same-instant bursts of one sender."""
    rng = np.random.default_rng(seed)
    accounts = np.unique(df["src_account"].to_numpy())
    t0, span = df[T].min(), int((df[T].max() - df[T].min()).total_seconds()) - 7200
    rows = []
    for i in range(40):  # a -> b -> c -> a, 10-50 minutes apart
        a, b, c = rng.choice(accounts, 3, replace=False)
        start = t0 + timedelta(seconds=int(rng.integers(0, span)))
        for j, (s, d) in enumerate([(a, b), (b, c), (c, a)]):
            rows.append((f"cyc-{i}-{j}", start + timedelta(minutes=int(j * rng.integers(10, 50))), s, d, float(rng.integers(100, 5000)) + 0.37, int(i % 4 == 0)))
    for i in range(40):  # one sender, three payments at the same instant, awkward cents
        a = rng.choice(accounts)
        at = t0 + timedelta(seconds=int(rng.integers(0, span)))
        for j in range(3):
            rows.append((f"burst-{i}-{j}", at, a, rng.choice(accounts), [0.1, 0.2, 0.3][j] + float(rng.integers(0, 3000)), 0))
    extra = pl.DataFrame(rows, schema=["event_id", T, "src_account", "dst_account", "amount", "label"], orient="row")
    extra = extra.with_columns(
        pl.col(T).cast(pl.Datetime("us", "UTC")),
        pl.lit("USD").alias("currency"),
        pl.lit("p2p").alias("channel"),
        pl.lit("US").alias("jurisdiction"),
    )
    return pl.concat([df, conform(extra)], how="vertical_relaxed").sort(T, "event_id")


@pytest.fixture(scope="module")
def data() -> pl.DataFrame:
    df = _extra_patterns(SyntheticSource(n_accounts=400, days=14, seed=3).read())
    assert df.height > 2000 and df["event_id"].is_unique().all()
    assert df.height - df[T].n_unique() > 80  # plenty of same-instant events
    return df


@pytest.fixture(scope="module")
def start(data):
    return data[T].min()


@pytest.fixture(scope="module")
def fitted(data, start) -> FeaturePlan:
    """The plan fitted once on the first week."""
    plan = FeaturePlan.from_config(CONFIG)
    plan.fit_transform(data.filter(pl.col(T) < start + timedelta(days=7)))
    return plan


@pytest.fixture(scope="module")
def full(data, fitted) -> pl.DataFrame:
    return fitted.transform(data)


def shared_instants(data: pl.DataFrame) -> list:
    """Instants holding several events, in time order (cutting there is the hard case)."""
    return data.filter(pl.col(T).is_duplicated())[T].unique().sort().to_list()


def test_features_are_not_trivial(full, fitted):
    # Every feature family takes several values here, so the comparisons below mean something.
    assert fitted.steps[3][1].hubs_  # at least one hub is excluded
    for col in ["cycle3_24h", "reciprocal_24h", "dst_2hop_in_24h", "src_2hop_in_24h", "src_out_degree_24h",
                "src_out_count_1h", "dst_in_sum_24h", "amount_vs_src_mean", "src_secs_since_prev",
                "te_src_account", "code_channel", "bucket_amount"]:  # fmt: skip
        assert full[col].drop_nulls().n_unique() > 1, col
    assert full["cycle3_24h"].sum() >= 20
    for col in ["src_fwd_share_12h", "src_fwd_matches_12h", "src_fwd_lag_12h", "src_fwd_new_12h", "src_fwd_habit_12h",
                "dst_fwd_habit_12h", "dst_in_alike_24h", "src_out_alike_24h", "dst_in_senders_1h", "dst_in_spread_24h",
                "pair_prior_12h", "src_age_12h", "dst_age_12h", "src_new_payees_12h", "src_new_payers_12h",
                "dst_new_payers_12h", "dst_cash_band_count_24h",
                "dst_cash_band_sum_24h", "dst_cash_band_senders_24h", "dst_cash_band_branches_24h",
                "src_in_countries_24h", "dst_in_countries_24h", "src_in_risk_24h", "cross_border",
                "src_fwd_chain_1h", "dst_in_fwd_24h", "dst_gather_routes_24h", "dst_return_24h"]:  # fmt: skip
        assert full[col].drop_nulls().n_unique() > 1, col
    assert set(fitted.steps[3][1].hubs_) == set(dict(fitted.steps)["paths"].hubs_)  # fitted as the graph step fits them


# --------------------------------------------------------------------------- (a)
def test_future_events_never_change_the_past(data, fitted, full, start):
    instants = shared_instants(data)
    cuts = [start + timedelta(days=2, hours=5, minutes=17), instants[len(instants) // 2], instants[-3], data[T].max()]
    for cut in cuts:
        truncated = fitted.transform(data.filter(pl.col(T) < cut))
        exact(truncated, full.filter(pl.col(T) < cut))


def test_future_training_events_never_change_past_target_encoding(data, start):
    """Training-row target encodings of events before T do not depend on anything at/after T."""
    train = data.filter(pl.col(T) < start + timedelta(days=9))
    te = ["te_src_account", "te_dst_account"]
    whole = FeaturePlan.from_config(CONFIG).fit_transform(train)
    instants = shared_instants(train)
    for cut in [start + timedelta(days=3, hours=1), instants[len(instants) // 2]]:
        part = FeaturePlan.from_config(CONFIG).fit_transform(train.filter(pl.col(T) < cut))
        exact(part.select("event_id", *te), whole.filter(pl.col(T) < cut).select("event_id", *te))


# --------------------------------------------------------------------------- (b)
def test_row_order_does_not_matter(data, fitted, full, start):
    for seed in (1, 2):
        shuffled = data.sample(fraction=1.0, shuffle=True, seed=seed)
        out = fitted.transform(shuffled)
        assert out["event_id"].to_list() == shuffled["event_id"].to_list()
        exact(out.sort("event_id"), full.sort("event_id"))
    train = data.filter(pl.col(T) < start + timedelta(days=7))
    plan_a, plan_b = FeaturePlan.from_config(CONFIG), FeaturePlan.from_config(CONFIG)
    a = plan_a.fit_transform(train)
    b = plan_b.fit_transform(train.sample(fraction=1.0, shuffle=True, seed=3))
    exact(b.sort("event_id"), a.sort("event_id"))
    assert plan_b.to_dict() == plan_a.to_dict()


# --------------------------------------------------------------------------- (c)
def _flip_labels_from(data: pl.DataFrame, cut) -> pl.DataFrame:
    flipped = pl.when(pl.col(T) >= cut).then(1 - pl.col("label")).otherwise(pl.col("label")).cast(pl.Int8)
    return data.with_columns(flipped.alias("label"))


def test_later_labels_never_change_earlier_features(data, start):
    cut = shared_instants(data)[len(shared_instants(data)) // 3]
    flipped = _flip_labels_from(data, cut)
    assert not flipped["label"].equals(data["label"])
    before = pl.col(T) < cut
    # Fitted on the rows before T: scoring everything reads no label at all.
    plan = FeaturePlan.from_config(CONFIG)
    train_out = plan.fit_transform(data.filter(before))
    exact(FeaturePlan.from_config(CONFIG).fit_transform(flipped.filter(before)), train_out)
    features = plan.feature_columns()
    exact(plan.transform(flipped).select("event_id", *features), plan.transform(data).select("event_id", *features))
    # Fitted on a training window that runs past T: the training rows before T (target
    # encoding included) are unchanged; only later rows and the frozen tables may move.
    train_end = pl.col(T) < start + timedelta(days=10)
    a = FeaturePlan.from_config(CONFIG).fit_transform(data.filter(train_end))
    b = FeaturePlan.from_config(CONFIG).fit_transform(flipped.filter(train_end))
    exact(b.filter(before).drop("label"), a.filter(before).drop("label"))
    assert not b["te_src_account"].equals(a["te_src_account"])  # the flip did reach later rows


# --------------------------------------------------------------------------- (d)
def test_streaming_with_history_equals_offline(data, fitted, full, start):
    instants = shared_instants(data)
    for cut in [start + timedelta(days=8, hours=3, minutes=41), instants[-5]]:
        later = pl.col(T) >= cut
        streamed = fitted.transform(data.filter(later), history=data.filter(~later))
        exact(streamed, full.filter(later))


def test_streaming_with_only_the_history_window(data, start):
    """Bounded steps need no more history than ``history_window`` (bit-identical sums)."""
    bounded = {k: v for k, v in CONFIG.items() if k != "time"}  # time needs unbounded history
    plan = FeaturePlan.from_config(bounded)
    plan.fit_transform(data.filter(pl.col(T) < start + timedelta(days=7)))
    # paths: its 24 h window's forwards read their senders' inflows an hour (hop_lag) before
    assert duration_us(plan.history_window()) == duration_us("25h")
    full = plan.transform(data)
    for day in (4, 8, 11):
        cut = start + timedelta(days=day, hours=5)
        batch = (pl.col(T) >= cut) & (pl.col(T) < cut + timedelta(hours=12))
        history = (pl.col(T) < cut) & (pl.col(T) >= cut - timedelta(hours=25))
        exact(plan.transform(data.filter(batch), history=data.filter(history)), full.filter(batch))


# --------------------------------------------------------------------------- (e)
def test_micro_batches_equal_offline(data, fitted, full, start):
    cut = start + timedelta(days=9)
    ordered = data.sort(T, "event_id").with_row_index("_pos")
    later = ordered.filter(pl.col(T) >= cut)
    # Batch boundaries by position: the second one falls inside a same-instant group, so
    # that instant's first events are history of the third batch and must stay invisible.
    shared = later.filter(pl.col(T).is_duplicated())
    split_inside = int(shared["_pos"][1])  # second event of the first shared instant
    assert later.filter(pl.col("_pos") == split_inside - 1)[T].item() == later.filter(pl.col("_pos") == split_inside)[T].item()
    first = int(later["_pos"][0])
    bounds = [first, (first + split_inside) // 2, split_inside, int(later["_pos"][-1]) + 1]
    assert len(set(bounds)) == 4
    parts = []
    for lo, hi in zip(bounds, bounds[1:]):
        batch = ordered.filter((pl.col("_pos") >= lo) & (pl.col("_pos") < hi)).drop("_pos")
        history = ordered.filter(pl.col("_pos") < lo).drop("_pos")
        parts.append(fitted.transform(batch, history=history))
    exact(pl.concat(parts), full.sort(T, "event_id").filter(pl.col(T) >= cut))


# ----------------------------------------------------------------- reference check
def test_history_features_match_a_brute_force_reference(data, fitted, full):
    """400 random events against the docstring definitions, evaluated by plain loops."""
    rows = data.select("event_id", T, "src_account", "dst_account", "amount", "channel", "region", "src_country").rows()
    got = full.rows(named=True)
    hubs = set(fitted.steps[3][1].hubs_)
    windows = {"1h": timedelta(hours=1), "24h": timedelta(hours=24)}

    def close(a, b):
        return (a is None and b is None) or (a is not None and b is not None and a == pytest.approx(b, rel=1e-12, abs=1e-9))

    def paths(win, start, end):  # time-ordered start -> x -> end (any start if None), 3 distinct, x no hub
        into_end = [e2 for e2 in win if e2[3] == end and e2[2] not in hubs and e2[2] != end]
        return sum(
            1
            for e2 in into_end
            for e1 in win
            if e1[3] == e2[2] and e1[1] < e2[1] and e1[2] not in (e2[2], end) and (start is None or e1[2] == start)
        )

    inflows_of: dict = {}
    payments_of: dict = {}
    for e in sorted(rows, key=lambda e: e[1]):
        inflows_of.setdefault(e[3], []).append(e)
        payments_of.setdefault(e[2], []).append(e)
    rng = np.random.default_rng(5)
    for i in rng.choice(len(rows), 400, replace=False):
        eid, t, s, d, a = rows[i][:5]
        r = got[i]
        assert r["event_id"] == eid
        for side, acc in (("src", s), ("dst", d)):
            prev = [e[1] for e in rows if e[1] < t and acc in (e[2], e[3])]
            assert close(r[f"{side}_secs_since_prev"], (t - max(prev)).total_seconds() if prev else None)
            for flow in ("in", "out"):
                mine = [e for e in rows if (e[2] if flow == "out" else e[3]) == acc]
                for wn, w in windows.items():
                    vals = [e[4] for e in mine if t - w <= e[1] < t]
                    assert r[f"{side}_{flow}_count_{wn}"] == len(vals)
                    assert close(r[f"{side}_{flow}_sum_{wn}"], sum(vals))
                    assert close(r[f"{side}_{flow}_mean_{wn}"], sum(vals) / len(vals) if vals else None)
                    assert close(r[f"{side}_{flow}_max_{wn}"], max(vals) if vals else None)
                cps = {e[3] if flow == "out" else e[2] for e in mine if t - windows["24h"] <= e[1] < t}
                assert r[f"{side}_{flow}_degree_24h"] == len(cps)
        win = [e for e in rows if t - windows["24h"] <= e[1] < t]
        sent = [e[4] for e in win if e[2] == s]
        received = sum(e[4] for e in win if e[3] == s)
        assert close(r["amount_vs_src_mean"], a / (sum(sent) / len(sent)) if sent else None)
        assert close(r["src_pass_through_24h"], (sum(sent) + a) / received if received > 0 else None)
        assert r["reciprocal_24h"] == sum(1 for e in win if e[2] == d and e[3] == s)
        assert r["cycle3_24h"] == paths(win, d, s)
        assert r["dst_2hop_in_24h"] == paths(win, None, d)
        assert r["src_2hop_in_24h"] == paths(win, None, s)
        _movement_reference(rows, r, t, s, d, a, close)
        _paths_reference(inflows_of, payments_of, hubs, r, t, s, d, a)


def _latest(rows: list, cap: int) -> list:
    """The latest ``cap`` of time-ordered rows, plus the rest of the earliest kept instant."""
    if len(rows) <= cap:
        return rows
    first = rows[-cap][1]
    return [e for e in rows if e[1] >= first]


def _paths_reference(received: dict, sent_by: dict, hubs: set, r: dict, t, s, d, a) -> None:
    """The paths step of CONFIG against its docstring, by plain loops (``received`` /
    ``sent_by``: each account's inflows / payments in time order)."""
    lag, day = timedelta(hours=1), timedelta(hours=24)

    def passes(paid, got):
        return paid is not None and got is not None and 0.85 * got <= paid <= got

    def inflows(acc, since, until):  # the latest 3 (whole instants) in [since, until)
        return _latest([e for e in received.get(acc, []) if since <= e[1] < until], 3)

    depth = 0
    for r1 in inflows(s, t - lag, t):
        x = r1[2]
        if s == d or x == s or not passes(a, r1[4]):
            continue
        depth = max(depth, 1)
        if x not in hubs and any(r0[2] != x and passes(r1[4], r0[4]) for r0 in inflows(x, max(r1[1] - lag, t - day), r1[1])):
            depth = 2
    assert r["src_fwd_chain_1h"] == depth
    into = inflows(d, t - day, t)
    forwards = [e for e in into if e[2] != d and e[2] not in hubs and any(passes(e[4], g[4]) for g in inflows(e[2], e[1] - lag, e[1]))]
    assert r["dst_in_fwd_24h"] == len(forwards)
    origins = set() if s in hubs else {e[2] for e in inflows(s, t - day, t)} - {s, d}
    via: dict = {}
    for e in into:
        if e[2] not in hubs and e[2] not in (d, s):
            for g in inflows(e[2], t - day, e[1]):
                if g[2] not in (d, e[2]):
                    via.setdefault(g[2], set()).add(e[2])
    assert r["dst_gather_routes_24h"] == max((1 + len(via.get(o, ())) for o in origins), default=0)
    paid = _latest([e for e in sent_by.get(d, []) if t - day <= e[1] < t], 3)
    assert r["dst_return_24h"] == sum(1 for e in paid if e[3] not in (s, d) and 0.85 ** 5 * e[4] <= a <= e[4])


def _movement_reference(rows, r, t, s, d, a, close) -> None:
    """The money-movement steps of CONFIG against their docstrings, by plain loops."""
    import math

    hour, day, half = timedelta(hours=1), timedelta(hours=24), timedelta(hours=12)
    into = {acc: sorted((e for e in rows if e[3] == acc and e[1] < t), key=lambda e: e[1]) for acc in (s, d)}
    def one_off(e, rows):  # no earlier payment of e's pair in the 12 hours before it
        return not any(p[2] == e[2] and p[3] == e[3] and e[1] - half <= p[1] < e[1] for p in rows)

    for wn, w in (("1h", hour), ("12h", half)):
        inflows = [e for e in into[s] if e[1] >= t - w]
        total = sum(e[4] for e in inflows)
        assert close(r[f"src_fwd_share_{wn}"], a / total if inflows and total > 0 else None)
        paid = sum(e[4] for e in rows if e[2] == s and t - w <= e[1] < t)
        assert close(r[f"src_fwd_drain_{wn}"], (paid + a) / total if total > 0 else None)
        got = sum(e[4] for e in into[d] if e[1] >= t - w)
        gave = sum(e[4] for e in rows if e[2] == d and t - w <= e[1] < t)
        assert close(r[f"dst_drain_{wn}"], gave / got if got > 0 else None)
        hits = [e for e in _latest(inflows, 3) if 0.85 * e[4] <= a <= e[4]]
        assert r[f"src_fwd_matches_{wn}"] == len(hits)
        assert close(r[f"src_fwd_lag_{wn}"], (t - max(e[1] for e in hits)).total_seconds() if hits else None)
        assert r[f"src_fwd_new_{wn}"] == sum(one_off(e, into[s]) for e in hits)
        for side, acc in (("src", s), ("dst", d)):
            assert r[f"{side}_new_payers_{wn}"] == sum(one_off(e, into[acc]) for e in into[acc] if e[1] >= t - w)
    def forwarded(acc, p):  # p passes on one of acc's latest 3 inflows of the hour before it
        before = [e for e in rows if e[3] == acc and p[1] - hour <= e[1] < p[1]]
        return any(0.85 * e[4] <= p[4] <= e[4] for e in _latest(sorted(before, key=lambda e: e[1]), 3))

    for side, acc in (("src", s), ("dst", d)):
        mine = [e for e in rows if e[2] == acc and t - half <= e[1] < t]
        assert r[f"{side}_fwd_habit_12h"] == sum(forwarded(acc, p) for p in mine)
    recent_in = [e for e in into[d] if e[1] >= t - day]
    recent_out = sorted((e for e in rows if e[2] == s and t - day <= e[1] < t), key=lambda e: e[1])
    assert r["dst_in_alike_24h"] == sum(1 for e in _latest(recent_in, 3) if 0.9 * a <= e[4] <= 1.1 * a)
    assert r["src_out_alike_24h"] == sum(1 for e in _latest(recent_out, 3) if 0.9 * a <= e[4] <= 1.1 * a)
    for wn, w in (("1h", hour), ("24h", day)):
        burst = [e for e in into[d] if e[1] >= t - w]
        assert r[f"dst_in_senders_{wn}"] == len({e[2] for e in burst})
        logs = [math.log1p(e[4]) for e in burst]
        mean = sum(logs) / len(logs) if logs else 0.0
        spread = math.sqrt(sum((v - mean) ** 2 for v in logs) / len(logs)) if len(logs) >= 2 else None
        assert (spread is None and r[f"dst_in_spread_{wn}"] is None) or abs(r[f"dst_in_spread_{wn}"] - spread) < 1e-4
    sent = sorted((e for e in rows if e[2] == s and e[1] < t), key=lambda e: e[1])
    assert r["pair_prior_12h"] == sum(1 for e in sent if e[3] == d and e[1] >= t - half)
    for side, acc in (("src", s), ("dst", d)):
        seen = [e[1] for e in rows if acc in (e[2], e[3]) and t - half <= e[1] < t]
        assert close(r[f"{side}_age_12h"], (t - min(seen)).total_seconds() if seen else None)
    for wn, w in (("1h", hour), ("12h", half)):
        new = [e for e in sent if e[1] >= t - w and not any(p[3] == e[3] and e[1] - half <= p[1] < e[1] for p in sent)]
        assert r[f"src_new_payees_{wn}"] == len(new)
    deposits = [e for e in into[d] if e[1] >= t - day and e[5] in ("cash_deposit", "p2p") and 500.0 <= e[4] < 1000.0]
    assert r["dst_cash_band_count_24h"] == len(deposits)
    assert close(r["dst_cash_band_sum_24h"], sum(e[4] for e in deposits))
    assert r["dst_cash_band_senders_24h"] == len({e[2] for e in _latest(deposits, 2)})
    assert r["dst_cash_band_branches_24h"] == len({e[6] for e in _latest(deposits, 2) if e[6] is not None})
    for side, acc in (("src", s), ("dst", d)):
        recent = [e for e in into[acc] if e[1] >= t - day]
        assert r[f"{side}_in_countries_24h"] == len({e[7] for e in _latest(recent, 2) if e[7] is not None})
    assert r["src_in_risk_24h"] == sum(1 for e in into[s] if e[1] >= t - day and e[7] in ("MX", "AE"))
