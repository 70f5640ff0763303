"""The money-movement steps (flow, paths, burst, novelty, structuring, cross_border) on tiny
hand-made frames whose every expected value is worked out by hand, and their per-event
forms against the batch forms.

Brute-force references on simulated data and the leakage checks are in
tests/test_feature_leakage.py; the Spark engine's account partitions in
tests/test_spark_parity.py; the online store in tests/test_store.py (every plan in
conf/features).
"""

from __future__ import annotations

import math

import polars as pl
import pytest

from aml_pipeline.errors import ConfigError
from aml_pipeline.features.plan import FeaturePlan
from aml_pipeline.store.engine import OnlineFeatures, plan_needs
from aml_pipeline.store.memory import MemoryStore
from tests.test_features import assert_column, assert_dtypes, at, events
from tests.test_store import assert_same_features, run_online


def run(rows, steps: dict, **extra) -> pl.DataFrame:
    plan = FeaturePlan.from_config(steps)
    frame = events(rows, **extra).sort("event_time", maintain_order=True)  # the store is fed in time order
    out = plan.fit_transform(frame)
    assert_dtypes(plan, out)
    # the per-event form gives the same values, fed one event at a time after the first
    got = run_online(plan, frame, frame["event_time"].min(), MemoryStore(plan_needs(plan).layout()))
    exact, total = assert_same_features(plan, frame, got)
    assert exact == total
    return out


# ------------------------------------------------------------------------------ flow
def test_flow_matching_split_and_forward_by_hand():
    rows = [
        ("in1", at("10:00"), "X", "M", 1000.0),  # the mule M receives 1000
        ("in2", at("11:00"), "Y", "M", 200.0),  # and 200, at the instant of its first forward
        ("f1", at("11:00"), "M", "B", 950.0),  # forwards 95 % of in1 an hour later (in2 unseen)
        ("f2", at("12:00"), "M", "C", 170.0),  # 85 % of in2: matches in2 only (170 < 0.85 * 1000)
        ("f3", at("12:30"), "M", "D", 50.0),  # matches nothing
        ("old", at("09:00", day=4), "Z", "M", 60.0),  # two days earlier: inside 7d, not 24h
    ]
    out = run(rows, {"flow": {"windows": ["24h", "7d"]}})
    assert_column(out, "src_fwd_share_24h", {"f1": 950 / 1000, "f2": 170 / 1200, "f3": 50 / 1200, "in1": None})
    assert_column(out, "src_fwd_matches_24h", {"f1": 1, "f2": 1, "f3": 0, "in1": 0})
    assert_column(out, "src_fwd_lag_24h", {"f1": 3600.0, "f2": 3600.0, "f3": None})
    assert_column(out, "src_fwd_matches_7d", {"f3": 0})  # 50 / 60 = 0.83: below the band
    assert_column(out, "src_fwd_share_7d", {"f1": 950 / 1060, "f3": 50 / 1260})
    # drained: what M paid out in the window plus this payment, over what it received
    assert_column(out, "src_fwd_drain_24h", {"f1": 950 / 1000, "f2": (950 + 170) / 1200, "f3": (950 + 170 + 50) / 1200})
    assert_column(out, "dst_drain_24h", {"in1": None, "in2": 0.0, "old": None})  # M had paid nothing out before in2


def test_flow_matching_keeps_the_latest_inflows_at_whole_instants():
    rows = [("a", at("10:00"), "X1", "M", 100.0), ("b", at("10:10"), "X2", "M", 100.0),
            ("c", at("10:10"), "X3", "M", 100.0), ("f", at("11:00"), "M", "B", 90.0)]
    out = run(rows, {"flow": {"windows": ["24h"], "max_inflows": 1}})
    # the latest inflow is at 10:10, where two arrived: both are kept, the 10:00 one is not
    assert_column(out, "src_fwd_matches_24h", {"f": 2})
    assert_column(out, "src_fwd_share_24h", {"f": 90 / 300})  # the share sums the whole window


def test_forwarding_habit_of_both_accounts_by_hand():
    rows = [
        ("a1", at("10:00"), "X", "M", 1000.0),
        ("a2", at("10:30"), "M", "N", 900.0),  # M forwards a1
        ("b1", at("11:00"), "Y", "M", 500.0),
        ("b2", at("12:00"), "M", "Z", 100.0),  # not a forward (too small)
        ("c1", at("13:00"), "M", "N", 440.0),  # forwards b1: M's second forward
        ("d1", at("14:00"), "Q", "M", 10.0),  # into M, which has forwarded twice
    ]
    out = run(rows, {"flow": {"windows": ["24h"], "habit": "30d"}})
    assert_column(out, "src_fwd_habit_30d", {"a2": 0, "b2": 1, "c1": 1, "d1": 0})
    assert_column(out, "dst_fwd_habit_30d", {"a1": 0, "b1": 1, "d1": 2, "c1": 0})


# ------------------------------------------------------------------------------ burst
# ------------------------------------------------------------------------------ paths
def test_forwarding_chain_of_three_hops_by_hand():
    rows = [
        ("h1", at("08:00"), "O", "A", 1000.0),  # the origin pays A
        ("h2", at("09:00"), "A", "B", 960.0),  # A forwards 96 %: a chain of one hop into h2
        ("h3", at("10:00"), "B", "C", 900.0),  # B forwards 94 % of h2, which forwarded h1: depth 2
        ("h4", at("11:00"), "C", "D", 400.0),  # 44 %: no forward
        ("slow", at("10:00", day=9), "B", "E", 930.0),  # three days after h2: beyond the 48 h hop lag
        ("self", at("12:00"), "C", "C", 890.0),  # a self-payment is no hop (it would forward h3)
        ("h5", at("13:00"), "X", "C", 10.0),
    ]
    out = run(rows, {"paths": {}})
    assert_column(out, "src_fwd_chain_48h", {"h1": 0, "h2": 1, "h3": 2, "h4": 0, "slow": 0, "self": 0})
    # C's inflows before h5: h3, a forward (B had received h2 an hour before it), and the
    # self-payment, never a forward
    assert_column(out, "dst_in_fwd_7d", {"h1": 0, "h2": 0, "h3": 0, "self": 1, "h5": 1})


def test_scatter_gather_routes_into_the_sink_by_hand():
    rows = [
        ("s1", at("09:00"), "O", "Y1", 500.0),  # the origin scatters over three intermediaries
        ("s2", at("09:05"), "O", "Y2", 500.0),
        ("s3", at("09:10"), "O", "Y3", 500.0),
        ("g1", at("10:00"), "Y1", "K", 480.0),  # and they gather at the sink K
        ("g2", at("10:10"), "Y2", "K", 470.0),
        ("g3", at("10:20"), "Y3", "K", 490.0),
        ("o1", at("10:30"), "P", "K", 300.0),  # a payer with no payer of its own: no origin
        ("k1", at("11:00"), "K", "O", 1400.0),  # K's payers reach O by no other route: 1, this one
    ]
    out = run(rows, {"paths": {}})
    # g1: O paid Y1, no route O -> y -> K before it: 1 (this one); g2: Y1 too; g3: Y1 and Y2
    assert_column(out, "dst_gather_routes_7d", {"s1": 0, "g1": 1, "g2": 2, "g3": 3, "o1": 0, "k1": 1})
    # forwards into K: g1, g2, g3 each pass on (94-98 %) what the intermediary got from O
    assert_column(out, "dst_in_fwd_7d", {"g1": 0, "g2": 1, "g3": 2, "o1": 3, "k1": 0})


def test_a_four_hop_cycle_returns_to_its_origin_by_hand():
    rows = [
        ("c1", at("09:00"), "O", "P", 1000.0),  # O -> P -> Q -> R -> O, each hop keeping 5 %
        ("c2", at("10:00"), "P", "Q", 950.0),
        ("c3", at("11:00"), "Q", "R", 902.0),
        ("c4", at("12:00"), "R", "O", 857.0),  # closes the cycle: 85.7 % of what O paid out
        ("r1", at("13:00"), "P", "O", 990.0),  # P pays O back directly: a 2-cycle, not a return of c1 to O from afar
        ("x1", at("14:00"), "Z", "O", 5000.0),  # more than O ever paid out: no return
        ("x2", at("15:00"), "Z", "O", 300.0),  # 30 %: below 0.85 ** 5 = 0.44
    ]
    out = run(rows, {"paths": {}})
    assert_column(out, "dst_return_7d", {"c4": 1, "r1": 0, "x1": 0, "x2": 0, "c1": 0, "c2": 0})
    assert_column(out, "src_fwd_chain_48h", {"c4": 2})  # and it is the end of a forwarding chain
    out = run(rows, {"paths": {"cycle_hops": 3}})  # two hops back at most: 0.85 ** 2 = 0.7225 still allows 0.857
    assert_column(out, "dst_return_7d", {"c4": 1})
    out = run(rows, {"paths": {"band": [0.9, 1.0], "cycle_hops": 2}})  # one hop back of at least 90 %: 85.7 % is not
    assert_column(out, "dst_return_7d", {"c4": 0})


def test_longer_cycles_with_decaying_amounts_close_at_their_origin_by_hand():
    rows = [
        # five hops, each passing on 92 %: the close is 71.6 % of what O5 paid out
        ("a1", at("09:00"), "O5", "A5", 1000.0), ("a2", at("10:00"), "A5", "B5", 920.0),
        ("a3", at("11:00"), "B5", "C5", 846.0), ("a4", at("12:00"), "C5", "D5", 778.0),
        ("a5", at("13:00"), "D5", "O5", 716.0),
        # seven hops of 90 % over three days: 53.1 %, still above 0.85 ** 5 = 0.444
        ("b1", at("09:00", day=7), "P0", "P1", 1000.0), ("b2", at("15:00", day=7), "P1", "P2", 900.0),
        ("b3", at("09:00", day=8), "P2", "P3", 810.0), ("b4", at("16:00", day=8), "P3", "P4", 729.0),
        ("b5", at("10:00", day=9), "P4", "P5", 656.0), ("b6", at("11:00", day=9), "P5", "P6", 590.0),
        ("b7", at("12:00", day=9), "P6", "P0", 531.0),
        # eight hops of 86 %: 35 % comes back, below 0.444 (beyond cycle_hops)
        ("c1", at("09:00", day=10), "Q0", "Q1", 1000.0), ("c2", at("10:00", day=10), "Q1", "Q2", 860.0),
        ("c3", at("11:00", day=10), "Q2", "Q3", 740.0), ("c4", at("12:00", day=10), "Q3", "Q4", 637.0),
        ("c5", at("13:00", day=10), "Q4", "Q5", 548.0), ("c6", at("14:00", day=10), "Q5", "Q6", 472.0),
        ("c7", at("15:00", day=10), "Q6", "Q7", 406.0), ("c8", at("16:00", day=10), "Q7", "Q0", 350.0),
        # innocent: a friend repays a loan directly (a 2-cycle, the graph step's reciprocal) ...
        ("f1", at("09:00", day=11), "F1", "F2", 500.0), ("f2", at("09:00", day=12), "F2", "F1", 480.0),
        # ... and a salary after the rent: no money returns, but its amount is in the band
        ("s1", at("09:00", day=11), "S", "L", 1000.0), ("s2", at("18:00", day=11), "E", "S", 700.0),
    ]
    out = run(rows, {"paths": {}})
    assert_column(out, "dst_return_7d", {"a5": 1, "b7": 1, "c8": 0, "f2": 0, "a1": 0, "a4": 0, "b6": 0})
    # seen from its two ends only, dst_return cannot tell the salary from a return ...
    assert_column(out, "dst_return_7d", {"s2": 1})
    # ... the forwarding chain ending in the payment does: the cycles' closing hops pass on
    # what their sender received from a payer that had forwarded too (2), the repaid loan
    # what its sender received a day before (1), the salary nothing
    assert_column(out, "src_fwd_chain_48h", {"a5": 2, "b7": 2, "c8": 2, "f2": 1, "s2": 0})
    out = run(rows, {"paths": {"cycle_hops": 8}})  # 0.85 ** 7 = 0.3206: the eighth hop's 35 % is a return
    assert_column(out, "dst_return_7d", {"a5": 1, "b7": 1, "c8": 1})


def test_a_forward_across_currencies_is_seen_in_one_reporting_currency():
    # O pays 1,000 USD to E1, who passes on 820 EUR (891 USD: 89 %) to E2, who pays 740 EUR back to O
    rows = [("h1", at("09:00"), "O", "E1", 1000.0), ("h2", at("15:00"), "E1", "E2", 820.0),
            ("h3", at("09:00", day=7), "E2", "O", 740.0)]
    frame = events(rows, currency=["USD", "EUR", "EUR"])
    plain = FeaturePlan.from_config({"paths": {}}).fit_transform(frame)
    assert_column(plain, "src_fwd_chain_48h", {"h2": 0, "h3": 1})  # 820 / 1000 in mixed units: no forward
    fx = FeaturePlan.from_config({"paths": {}}, {"currency": "USD", "rates": {"EUR": 1.0869565217}})
    converted = fx.fit_transform(frame)
    assert_column(converted, "src_fwd_chain_48h", {"h2": 1, "h3": 2})  # like with like: a three-hop chain
    assert_column(converted, "dst_return_7d", {"h3": 1})

def test_paths_never_go_through_a_hub():
    # H pays three distinct receivers in training: a hub when max_intermediary_degree is 2
    rows = [
        ("t1", at("08:00"), "H", "R1", 10.0), ("t2", at("08:01"), "H", "R2", 10.0), ("t3", at("08:02"), "H", "R3", 10.0),
        ("in", at("09:00"), "O", "H", 1000.0),
        ("f1", at("10:00"), "H", "A", 950.0),  # H forwards O's payment
        ("f2", at("11:00"), "A", "K", 930.0),  # A forwards it on: the third hop runs through H
        ("f3", at("12:00"), "Z", "A", 1.0),
    ]
    out = run(rows, {"paths": {"max_intermediary_degree": 2}})
    assert_column(out, "src_fwd_chain_48h", {"f1": 1, "f2": 1})  # not 2: H's inflows are not followed
    assert_column(out, "dst_in_fwd_7d", {"f3": 0})  # A's inflow from H (f1) is not counted as a forward
    assert_column(out, "dst_gather_routes_7d", {"f1": 0})  # H sends: a hub is no route


def test_alike_amounts_into_the_receiver_and_out_of_the_sender_by_hand():
    rows = [("p1", at("10:00"), "P1", "R", 1000.0), ("p2", at("10:10"), "P2", "R", 1050.0),
            ("p3", at("10:20"), "P3", "R", 500.0), ("p4", at("10:30"), "P4", "R", 950.0),
            ("s1", at("11:00"), "S", "T1", 300.0), ("s2", at("11:05"), "S", "T2", 310.0), ("s3", at("11:10"), "S", "T3", 330.0)]
    out = run(rows, {"burst": {"windows": ["1h"], "alike_windows": ["24h"], "alike_band": 0.1}})
    # 950 ± 10 % is [855, 1045]: 1000 is alike, 1050 is not
    assert_column(out, "dst_in_alike_24h", {"p1": 0, "p2": 1, "p3": 0, "p4": 1})
    assert_column(out, "src_out_alike_24h", {"s1": 0, "s2": 1, "s3": 2})  # 330 ± 10 % is [297, 363]


# ------------------------------------------------------------------------------ burst (senders, spread)
def test_burst_distinct_senders_and_spread_by_hand():
    rows = [(f"s{i}", at(f"10:{10 * i:02d}"), f"P{i}", "R", amount) for i, amount in enumerate([99.0, 99.0, 99.0, 499.0])]
    rows.append(("s4", at("10:50"), "P0", "R", 99.0))
    out = run(rows, {"burst": {"windows": ["1h"]}})
    assert_column(out, "dst_in_senders_1h", {"s0": 0, "s1": 1, "s3": 3, "s4": 4})
    assert_column(out, "dst_in_spread_1h", {"s0": None, "s1": None, "s2": 0.0, "s3": 0.0})
    logs = [math.log(100.0)] * 3 + [math.log(500.0)]
    mean = sum(logs) / 4
    spread = math.sqrt(sum((v - mean) ** 2 for v in logs) / 4)
    assert out.filter(pl.col("event_id") == "s4")["dst_in_spread_1h"].item() == pytest.approx(spread, abs=1e-4)


# ------------------------------------------------------------------------------ novelty
def test_novelty_pairs_ages_and_new_payees_by_hand():
    rows = [
        ("n1", at("10:00", day=6), "A", "B", 10.0),
        ("n2", at("10:00", day=8), "A", "B", 10.0),  # B paid two days ago: not new
        ("n3", at("11:00", day=8), "A", "C", 10.0),  # C is new
        ("n4", at("12:00", day=8), "A", "D", 10.0),  # D is new
        ("n5", at("10:00", day=20), "A", "B", 10.0),  # 12 days after the last A -> B: outside 7d
    ]
    out = run(rows, {"novelty": {"lookback": "7d", "new_windows": ["24h"]}})
    assert_column(out, "pair_prior_7d", {"n1": 0, "n2": 1, "n3": 0, "n5": 0})
    assert_column(out, "src_age_7d", {"n1": None, "n2": 2 * 86400.0, "n4": 2 * 86400.0 + 7200.0, "n5": None})
    assert_column(out, "dst_age_7d", {"n2": 2 * 86400.0, "n3": None, "n5": None})
    # n2 was a repeat, n3 new: at n4 the last 24 h hold one new payee
    assert_column(out, "src_new_payees_24h", {"n1": 0, "n2": 0, "n3": 0, "n4": 1, "n5": 0})


# ------------------------------------------------------------------------------ structuring
def test_structuring_run_across_branches_by_hand():
    rows = [
        ("d1", at("10:00", day=6), "S1", "R", 9000.0),  # band deposits: [8500, 10000)
        ("d2", at("10:00", day=8), "S2", "R", 9900.0),
        ("d3", at("10:00", day=9), "R", "R", 9500.0),  # the account deposits its own cash
        ("big", at("10:00", day=10), "S1", "R", 10000.0),  # at the threshold: not in the band
        ("card", at("10:00", day=11), "S3", "R", 9000.0),  # in the band, but not cash
        ("q", at("10:00", day=12), "S4", "R", 100.0),
        ("late", at("09:59", day=15), "S4", "R", 100.0),  # d1 has left the 7-day window
    ]
    channel = ["cash_deposit", "CASH_DEPOSIT", "cash_deposit", "cash_deposit", "card", "cash_deposit", "cash_deposit"]
    region = ["US-1", "US-2", "US-2", "US-3", "US-1", "US-1", "US-1"]
    out = run(rows, {"structuring": {"windows": ["7d"], "band": 0.15, "branch_column": "region"}},
              channel=channel, region=region)
    assert_column(out, "dst_cash_band_count_7d", {"d1": 0, "d2": 1, "q": 3, "late": 2})
    assert_column(out, "dst_cash_band_sum_7d", {"d1": 0.0, "q": 28400.0, "late": 19400.0})
    assert_column(out, "dst_cash_band_senders_7d", {"q": 3, "late": 2})
    assert_column(out, "dst_cash_band_branches_7d", {"q": 2, "late": 1})


# ------------------------------------------------------------------------------ cross-border
def test_cross_border_countries_and_risk_list_by_hand():
    rows = [
        ("c1", at("10:00"), "A", "M", 10.0),
        ("c2", at("11:00"), "B", "M", 10.0),
        ("c3", at("12:00"), "C", "M", 10.0),
        ("c4", at("13:00"), "M", "Z", 10.0),
    ]
    out = run(rows, {"cross_border": {"windows": ["24h"], "risk_countries": ["IR"]}},
              src_country=["GB", "IR", "GB", "US"], dst_country=["US", "US", "US", None])
    assert_column(out, "cross_border", {"c1": 1, "c4": None})
    assert_column(out, "risk_country", {"c1": 0, "c2": 1, "c4": 0})
    assert_column(out, "dst_in_countries_24h", {"c1": 0, "c2": 1, "c3": 2})
    assert_column(out, "src_in_countries_24h", {"c4": 2})
    assert_column(out, "src_in_risk_24h", {"c4": 1, "c3": 0})


# ------------------------------------------------------------------------------ contract
@pytest.mark.parametrize("kind,params,match", [
    ("flow", {"windows": ["1mo"]}, r"windows: '1mo' is not a fixed duration"),
    ("flow", {"band": [0.9, 0.8]}, r"band"),
    ("burst", {"windows": []}, r"windows: give at least one window"),
    ("novelty", {"lookback": "x"}, r"lookback"),
    ("structuring", {"band": 1.5}, r"band must be in"),
    ("cross_border", {"max_rows": 0}, r"max_rows"),
    ("paths", {"hop_lag": "soon"}, r"hop_lag"),
    ("paths", {"band": [1.0, 0.5]}, r"band"),
    ("paths", {"cycle_hops": 1}, r"cycle_hops"),
    ("graph", {"max_rows": 0}, r"max_rows"),
])
def test_bad_parameters_name_the_key(kind, params, match):
    with pytest.raises(ConfigError, match=rf"features\.steps\.{kind}.*{match}"):
        FeaturePlan.from_config({kind: params})


def test_every_step_has_a_per_event_form():
    plan = FeaturePlan.from_config({k: {} for k in ("flow", "paths", "burst", "novelty", "structuring", "cross_border")})
    OnlineFeatures(plan)  # no step is left to deploy.engine=polars
    needs = plan_needs(plan)
    assert set(needs.extra_columns) == {"channel", "src_country", "dst_country"}  # structuring: no branch_column by default
    assert needs.window_us == 37 * 86_400 * 10**6  # novelty: 30 days of look-back plus its 7-day window
    assert needs.expand_us == 9 * 86_400 * 10**6  # paths: the payers' inflows, 7 days plus the 48 h hop lag
    assert needs.expand_rows == 20  # paths follows the payers of each account's latest 20 inflows
    with_graph = plan_needs(FeaturePlan.from_config({"paths": {}, "graph": {"max_rows": 30}}))
    assert with_graph.expand_rows == 30  # the most any 2-hop step reads


def test_per_event_forms_equal_the_batch_forms_on_simulated_data():
    """Every money-movement step (cross_border and branch counts included, which no shipped
    plan of tests/test_store.py has) on three weeks of the realistic world: the store fed
    event by event gives the batch values bit for bit, same-instant events reversed."""
    from aml_pipeline.sources.synthetic import SyntheticSource

    frame = SyntheticSource(n_accounts=300, days=21, seed=3, laundering_rate=0.03, realism="realistic").read()
    steps = {"flow": {}, "paths": {"max_intermediary_degree": 20}, "burst": {}, "novelty": {}, "cross_border": {"risk_countries": ["AE", "MX"]},
             "structuring": {"reporting_threshold": 1000.0, "band": 0.5, "branch_column": "region"}}
    plan = FeaturePlan.from_config(steps)
    cut = frame["event_time"][int(frame.height * 0.6)]
    plan.fit_transform(frame.filter(pl.col("event_time") < cut))
    got = run_online(plan, frame, cut, MemoryStore(plan_needs(plan).layout()), reverse_instants=True)
    assert len(got) > 1000
    exact, total = assert_same_features(plan, frame, got)
    assert exact == total
    out = plan.transform(frame)
    for col in ("src_fwd_matches_24h", "src_fwd_new_7d", "src_fwd_chain_48h", "dst_in_fwd_7d", "dst_gather_routes_7d", "dst_return_7d", "dst_in_senders_1h", "src_new_payers_7d", "dst_cash_band_branches_14d",
                "src_in_countries_7d", "src_in_risk_7d"):
        assert out[col].drop_nulls().n_unique() > 1, col  # the comparison covers real values
