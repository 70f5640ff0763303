"""Alerts in plain words: the reasons an analyst reads beside a score.

An alert's top contributing features (name, value, SHAP contribution) become sentences
such as "forwarded 96 % of the money it received in the last 24 h, 40 minutes after a
matching inflow" and a *typology hint* (fan_in, fan_out, cycle, scatter_gather,
layering, structuring, cross_border, new_account): the typology its strongest
feature points at, for the workbench's queue filter. Only features that pushed the score
*up* are told; sibling columns of the same event (the lag beside a forwarded share) are
read from the row when given.

The scorer writes them with each alert (``reasons`` beside ``top_features``), so the case
page shows what the model saw when it scored, never a recomputation. One sentence per
feature kind is written here, beside the feature steps whose columns it reads; a column
no rule knows reads "<name> was <value>".
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Iterable, Mapping, Optional

import polars as pl

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
SIDE = {"src": "the sender", "dst": "the receiver"}
WINDOW_WORDS = {"1h": "hour", "24h": "24 h", "7d": "7 days", "14d": "14 days", "30d": "30 days", "48h": "48 h"}


def window(w: str) -> str:
    """'24h' -> 'the last 24 h'."""
    if w in WINDOW_WORDS:
        return f"the last {WINDOW_WORDS[w]}"
    m = re.fullmatch(r"(\d+)([smhdw])", w)
    if not m:
        return f"the last {w}"
    n, u = int(m.group(1)), {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week"}[m.group(2)]
    return f"the last {n} {u}{'s' if n != 1 else ''}"


def duration(seconds: Any) -> str:
    """Seconds in the largest sensible unit: 40 minutes, 3.5 hours, 2 days."""
    s = float(seconds)
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if s >= size:
            n = s / size
            text = f"{n:.0f}" if n >= 10 or abs(n - round(n)) < 0.05 else f"{n:.1f}"
            return f"{text} {unit}{'' if text == '1' else 's'}"
    return f"{s:.0f} second{'' if round(s) == 1 else 's'}"


def count(v: Any) -> str:
    return f"{int(round(float(v))):,}"


def money(v: Any) -> str:
    v = float(v)
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.2f}"


def pct(v: Any) -> str:
    return f"{float(v) * 100:.0f} %"


def plural(n: Any, word: str, many: Optional[str] = None) -> str:
    k = int(round(float(n)))
    if k == 0:
        return f"no {many or word + 's'}"
    return f"{k:,} {word if k == 1 else (many or word + 's')}"


Rule = Callable[[re.Match, float, Mapping[str, Any]], Optional[str]]
RULES: list[tuple[re.Pattern, Optional[str], Rule]] = []


def rule(pattern: str, hint: Optional[str] = None):
    def register(fn: Rule) -> Rule:
        RULES.append((re.compile(pattern), hint, fn))
        return fn

    return register


# -- time --------------------------------------------------------------------------------
@rule(r"hour")
def _hour(m, v, row):
    return f"made at {int(v):02d}:00 UTC"


@rule(r"weekday")
def _weekday(m, v, row):
    return f"made on a {WEEKDAYS[int(v) - 1]}" if 1 <= int(v) <= 7 else None


@rule(r"(src|dst)_secs_since_prev")
def _since_prev(m, v, row):
    return f"{SIDE[m[1]]}'s previous transaction was {duration(v)} earlier"


# -- amount ------------------------------------------------------------------------------
@rule(r"log_amount")
def _amount(m, v, row):
    return f"an amount of {money(math.expm1(v))}"


@rule(r"round_(\d+)")
def _round(m, v, row):
    return f"a round amount (a multiple of {int(m[1]):,})" if v >= 1 else f"not a multiple of {int(m[1]):,}"


@rule(r"whole_amount")
def _whole(m, v, row):
    return "a whole amount (no cents)" if v >= 1 else None


@rule(r"near_threshold", "structuring")
def _near(m, v, row):
    return "just below the reporting threshold" if v >= 1 else None


@rule(r"amount_vs_src_mean")
def _vs_mean(m, v, row):
    return f"{v:.1f}× the sender's usual payment"


# -- rolling windows ---------------------------------------------------------------------
@rule(r"(src|dst)_(in|out)_(count|sum|mean|max)_(\w+)")
def _rolling(m, v, row):
    side, way, stat, w = SIDE[m[1]], m[2], m[3], window(m[4])
    verb = "received" if way == "in" else "paid out"
    if stat == "count":
        return f"{side} {verb} {plural(v, 'payment')} in {w}"
    if stat == "sum":
        return f"{side} {verb} {money(v)} in {w}"
    if stat == "mean":
        return f"{side}'s {'inflows' if way == 'in' else 'payments'} in {w} averaged {money(v)}"
    return f"{side}'s largest {'inflow' if way == 'in' else 'payment'} in {w} was {money(v)}"


# -- graph -------------------------------------------------------------------------------
@rule(r"dst_in_degree_(\w+)", "fan_in")
def _dst_in_degree(m, v, row):
    return f"the receiver was paid by {plural(v, 'distinct account')} in {window(m[1])}"


@rule(r"src_out_degree_(\w+)", "fan_out")
def _src_out_degree(m, v, row):
    return f"the sender paid {plural(v, 'distinct account')} in {window(m[1])}"


@rule(r"(src|dst)_(in|out)_degree_(\w+)")
def _degree(m, v, row):
    return (f"{SIDE[m[1]]} {'was paid by' if m[2] == 'in' else 'paid'} {plural(v, 'distinct account')} "
            f"in {window(m[3])}")


@rule(r"src_pass_through_(\w+)", "layering")
def _pass_through(m, v, row):
    return f"the sender passed on {pct(v)} of what it received in {window(m[1])}"


@rule(r"reciprocal_(\w+)", "cycle")
def _reciprocal(m, v, row):
    return f"the receiver had paid the sender in {window(m[1])} ({plural(v, 'time')})" if v > 0 else None


@rule(r"cycle3_(\w+)", "cycle")
def _cycle3(m, v, row):
    return f"this payment closes {plural(v, 'three-account cycle')} within {window(m[1])}" if v > 0 else None


@rule(r"dst_2hop_in_(\w+)", "scatter_gather")
def _dst_2hop(m, v, row):
    return f"{plural(v, 'two-hop path')} led into the receiver in {window(m[1])}"


@rule(r"src_2hop_in_(\w+)", "layering")
def _src_2hop(m, v, row):
    return f"{plural(v, 'two-hop path')} led into the sender in {window(m[1])}"


# -- flow: passing money on -------------------------------------------------------------------
@rule(r"src_fwd_share_(\w+)", "layering")
def _fwd_share(m, v, row):
    lag = row.get(f"src_fwd_lag_{m[1]}")
    text = f"forwarded {pct(v)} of the money it received in {window(m[1])}"
    if lag is not None and not (isinstance(lag, float) and math.isnan(lag)):
        text += f", {duration(lag)} after a matching inflow"
    return text


@rule(r"src_fwd_matches_(\w+)", "layering")
def _fwd_matches(m, v, row):
    return f"{plural(v, 'inflow')} of {window(m[1])} match this amount: it may be passing them on" if v > 0 else \
        f"no inflow of {window(m[1])} matches this amount"


@rule(r"src_fwd_lag_(\w+)", "layering")
def _fwd_lag(m, v, row):
    return f"paid {duration(v)} after receiving a matching amount"


@rule(r"src_fwd_new_(\w+)", "layering")
def _fwd_new(m, v, row):
    return f"{plural(v, 'matched inflow')} of {window(m[1])} came from payers new to the sender"


@rule(r"(src_fwd|dst)_drain_(\w+)", "layering")
def _drain(m, v, row):
    who = "the sender" if m[1] == "src_fwd" else "the receiver"
    return f"{who} paid out {pct(v)} of what it received in {window(m[2])}"


@rule(r"(src|dst)_fwd_habit_(\w+)", "layering")
def _habit(m, v, row):
    return f"{plural(v, 'payment')} of {SIDE[m[1]]} over {window(m[2])} passed on one of its inflows"


# -- paths -------------------------------------------------------------------------------
@rule(r"src_fwd_chain_(\w+)", "layering")
def _chain(m, v, row):
    return f"ends a chain of {plural(v, 'forwarding hop')}" if v > 0 else None


@rule(r"dst_in_fwd_(\w+)", "layering")
def _in_fwd(m, v, row):
    return f"{plural(v, 'inflow')} of the receiver in {window(m[1])} were passed-on money"


@rule(r"dst_gather_routes_(\w+)", "scatter_gather")
def _gather(m, v, row):
    return f"{plural(v, 'distinct route')} from one payer of the sender lead into the receiver in {window(m[1])}"


@rule(r"dst_return_(\w+)", "cycle")
def _return(m, v, row):
    return f"may return money the receiver sent out in {window(m[1])} ({plural(v, 'candidate')}): a cycle" \
        if v > 0 else None


# -- burst -------------------------------------------------------------------------------
@rule(r"dst_in_senders_(\w+)", "fan_in")
def _senders(m, v, row):
    return f"{plural(v, 'distinct account')} paid the receiver in {window(m[1])}"


@rule(r"dst_in_spread_(\w+)", "fan_in")
def _spread(m, v, row):
    return f"the receiver's inflows in {window(m[1])} were {'nearly equal' if v < 0.2 else 'spread'} in amount " \
           f"(spread {v:.2f})"


@rule(r"dst_in_alike_(\w+)", "fan_in")
def _dst_alike(m, v, row):
    return f"{plural(v, 'inflow')} of the receiver in {window(m[1])} had a similar amount"


@rule(r"src_out_alike_(\w+)", "fan_out")
def _src_alike(m, v, row):
    return f"the sender made {plural(v, 'payment')} of a similar amount in {window(m[1])}"


# -- novelty -----------------------------------------------------------------------------
@rule(r"pair_prior_(\w+)")
def _pair(m, v, row):
    return f"the first payment between these accounts in {window(m[1])}" if v == 0 else \
        f"{plural(v, 'earlier payment')} between these accounts in {window(m[1])}"


@rule(r"(src|dst)_age_(\w+)", "new_account")
def _age(m, v, row):
    return f"{SIDE[m[1]]} was first seen {duration(v)} earlier"


@rule(r"src_new_payees_(\w+)", "fan_out")
def _new_payees(m, v, row):
    return f"the sender paid {plural(v, 'new payee')} in {window(m[1])}"


@rule(r"(src|dst)_new_payers_(\w+)", "fan_in")
def _new_payers(m, v, row):
    return f"{SIDE[m[1]]} received from {plural(v, 'new payer')} in {window(m[2])}"


# -- structuring -------------------------------------------------------------------------
@rule(r"dst_cash_band_count_(\w+)", "structuring")
def _cash_count(m, v, row):
    return f"the receiver took {plural(v, 'cash deposit')} just under the reporting threshold in {window(m[1])}"


@rule(r"dst_cash_band_sum_(\w+)", "structuring")
def _cash_sum(m, v, row):
    return f"the receiver took {money(v)} in cash deposits just under the reporting threshold in {window(m[1])}"


@rule(r"dst_cash_band_(senders|branches)_(\w+)", "structuring")
def _cash_who(m, v, row):
    what = "depositor" if m[1] == "senders" else "branch"
    return f"those deposits came from {plural(v, what, 'branches' if what == 'branch' else None)} in {window(m[2])}"


# -- cross-border ------------------------------------------------------------------------
@rule(r"cross_border", "cross_border")
def _cross(m, v, row):
    return "a cross-border payment" if v >= 1 else None


@rule(r"risk_country", "cross_border")
def _risk(m, v, row):
    return "one end is in a listed high-risk country" if v >= 1 else None


@rule(r"(src|dst)_in_countries_(\w+)", "cross_border")
def _countries(m, v, row):
    return f"{SIDE[m[1]]} received money from {plural(v, 'country', 'countries')} in {window(m[2])}"


@rule(r"src_in_risk_(\w+)", "cross_border")
def _in_risk(m, v, row):
    return f"the sender received {plural(v, 'payment')} from listed high-risk countries in {window(m[1])}"


# -- encodings and categories ------------------------------------------------------------------
@rule(r"te_(\w+)")
def _te(m, v, row):
    return f"past labels give this {m[1].replace('_', ' ')} a laundering rate of {v:.1%}"


@rule(r"code_(\w+)")
def _code(m, v, row):
    value = row.get(m[1])
    if value is None:
        return None
    if m[1] == "channel":
        return f"paid by {str(value).replace('_', ' ')}"
    if m[1] == "currency":
        return f"paid in {value}"
    return f"{m[1].replace('_', ' ')} {value}"


def _number(value: Any) -> Optional[float]:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def sentence(feature: str, value: Any, row: Mapping[str, Any] | None = None) -> tuple[Optional[str], Optional[str]]:
    """(the sentence, the typology hint) for one feature and its value."""
    row = row or {}
    v = _number(value)
    for pattern, hint, fn in RULES:
        m = pattern.fullmatch(feature)
        if m is None:
            continue
        if v is None:
            return f"{feature.replace('_', ' ')} was unknown", None
        try:
            text = fn(m, v, row)
        except (ValueError, OverflowError, IndexError):
            text = None
        return text, hint
    shown = "unknown" if v is None else f"{v:,.4g}"
    return f"{feature} was {shown}", None


def reasons_and_hint(top_features: Iterable[Mapping[str, Any]] | None,
                     row: Mapping[str, Any] | None = None) -> tuple[list[str], Optional[str]]:
    """Sentences for the features that raised the score (strongest first), and the typology
    hint of the strongest one that has a hint (None when none has)."""
    words: list[str] = []
    hint = None
    for f in top_features or []:
        c = _number(f.get("contribution"))
        if c is not None and c <= 0:
            continue
        text, h = sentence(str(f.get("feature")), f.get("value"), row)
        if text and text not in words:
            words.append(text)
        if hint is None and h is not None and text and _number(f.get("value")) not in (0.0, None):
            hint = h  # a count of 0 says what did not happen: no typology to hint at
    return words, hint


def reasons_column(top_features, frame):
    """The ``reasons`` column of a decision frame: a list of sentences for each row with
    top features (null elsewhere), reading sibling feature values from ``frame``."""
    n = top_features.len()
    out: list = [None] * n
    idx = [i for i, v in enumerate(top_features.is_not_null().to_list()) if v]
    if idx:
        tops = top_features.gather(idx).to_list()
        rows = frame[idx].to_dicts()
        for i, tf, row in zip(idx, tops, rows):
            out[i] = reasons_and_hint(tf, row)[0]
    return pl.Series("reasons", out, pl.List(pl.String))


def one_line(top_features: Iterable[Mapping[str, Any]] | None) -> str:
    """Top features as one compact line, ``feature=value (+contribution); ...`` (the
    ``reasons`` string of the registered MLflow model's output, :mod:`aml_pipeline.pyfunc`)."""
    parts = []
    for t in top_features or []:
        value = "null" if t["value"] is None else f"{t['value']:.6g}"
        contrib = "" if t["contribution"] is None else f" ({t['contribution']:+.3f})"
        parts.append(f"{t['feature']}={value}{contrib}")
    return "; ".join(parts)
