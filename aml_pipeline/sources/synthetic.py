"""A synthetic transaction simulator with labelled laundering typologies.

Why a simulator
---------------
Real labelled AML data is scarce and cannot be shared, so the pipeline ships a source that
needs no download and whose ground truth is known exactly: every laundering transaction
carries ``label=1``, its ``typology`` and the ``instance_id`` of the scheme it belongs to.
It produces the canonical schema directly (no ``raw:`` or bookkeeping columns).

Behaviour model
---------------
*Accounts.* ``n_accounts`` accounts held at 30 banks in ten countries (US, GB, DE, FR, NL,
CH, AE, SG, HK, MX); the ``jurisdiction`` country is the home market with about 55 % of the
accounts and 8 of the banks. Every account has a branch region (``<country>-<1..5>``).
Three kinds of account exist:

- *persons* (~96 %) receive a salary, pay at merchants, pay rent/standing orders, send
  each other money and sometimes deposit cash;
- *merchants* (~3 %) receive the retail card payments, with Zipf-like popularity, so a
  few of them have thousands of distinct payers. They deposit cash takings, pay suppliers
  and sweep their weekly revenue to their owner's account;
- *employers* (~1 %) pay monthly salaries to many persons (again Zipf-sized).

Merchants and employers exist on purpose: they are *legitimate* high in-degree and
high out-degree accounts. Without them "many counterparties" would be a perfect laundering
detector (fan-in, fan-out); with them a model has to learn the shape and timing of a scheme
rather than a degree count. For the same reason most payments are domestic (a
person pays merchants, landlords and friends of the same country), a person's
counterparties repeat (salary, rent, a circle of friends), amounts are heavy tailed and
times follow a day/night rhythm in the sender's local time zone.

*Normal behaviour* (mean events per day; together ~0.55 transactions per account per
day, so the defaults of 20,000 accounts x 90 days give about 1 million transactions):

- salaries (channel ``salary``): ~85 % of persons, monthly on the employer's pay day
  (1st, 15th, 25th or 28th, +-1 day), in a night batch, a stable per-person lognormal amount;
- card payments (``card``): per-person Poisson rate (gamma-distributed, mean 0.43/day,
  busier at weekends), amounts a lognormal body around the merchant's typical ticket with a
  Pareto tail;
- standing orders (``ach``): 0-2 per person (rent, loans), a fixed amount on a fixed day of
  every month, paid to "landlord" persons, some of whom collect from many tenants;
- person-to-person transfers (``p2p``; ``wire`` when large or cross-border), mostly within a
  small social neighbourhood so partners repeat;
- cash deposits (``cash_deposit``; the account is both sender and receiver, as in
  AMLworld) by persons (rare, small) and merchants (frequent, up to and above the reporting
  threshold, so "just below the threshold" alone is not a give-away);
- merchant payouts: weekly revenue sweeps to the owner's personal account (``ach``) and
  supplier payments to other businesses (``wire``).

*Laundering.* Instances of ten typologies are mixed into the same accounts' normal
activity: the participants are *actors* (~2 % of persons) and *mules* (~0.6 % of persons,
with thinner normal activity), who all also have ordinary transactions. The eight
AMLSim/AMLworld shapes ``fan_in``, ``fan_out``, ``cycle``, ``scatter_gather``,
``gather_scatter``, ``bipartite``, ``stack``, ``random`` plus ``structuring`` (deposits of
85-99 % of ``reporting_threshold`` over a few days) and ``pass_through`` (a mule forwards
90-98 % of what it receives within minutes to hours). Each instance has 3-18
transactions, stays inside one country in ~92 % of cases (laundering is more often
cross-border than normal traffic, but not overwhelmingly), uses the ordinary transfer
channels, and its amounts (lognormal around 600 USD) overlap the normal p2p transfers,
rents, salaries, sweeps and large card payments: the structure, not the amount, gives it
away. Structuring runs in the home jurisdiction, whose currency the threshold is taken to
be in. The number of instances is derived from ``laundering_rate`` and the normal volume so
that the labelled fraction is close to it, and split between typologies by
``typology_mix`` (instance weights; weight 0 removes a typology, any positive weight gets
at least one instance).

Amounts are in the sender's currency (cross-border payments keep it), rounded to cents.
Days are counted from ``start``; times are whole seconds in UTC inside
``[start, start + days)``. Everything is vectorised numpy (loops run over typologies or
countries only) driven by one ``np.random.default_rng(seed)``, so the same parameters give
the same frame, byte for byte; the polars frame is built once at the end. One million rows
take a second or two.

This is the *simple* world (``realism: simple``, the default): deliberately learnable.
``realism: realistic`` builds on the same accounts and helpers (realistic.py): every
typology gets legitimate look-alikes and laundering looks like ordinary transfers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import polars as pl

from aml_pipeline.errors import ConfigError
from aml_pipeline.progress import status
from aml_pipeline.schema import conform
from aml_pipeline.sources.base import Source
from aml_pipeline.timeutil import config_time

# ------------------------------------------------------------------------- constants
COUNTRIES = ("US", "GB", "DE", "FR", "NL", "CH", "AE", "SG", "HK", "MX")
CURRENCIES = ("USD", "GBP", "EUR", "EUR", "EUR", "CHF", "AED", "SGD", "HKD", "MXN")
#: Units of the country's currency per US dollar (rough, fixed: only the scale matters).
FX_PER_USD = np.array([1.0, 0.79, 0.92, 0.92, 0.92, 0.88, 3.67, 1.35, 7.8, 17.0])
#: Standard-time UTC offset of each country, used to turn local hours into UTC.
UTC_OFFSET_H = np.array([-5, 0, 1, 1, 1, 1, 4, 8, 8, -6], dtype=np.int64)
N_COUNTRIES = len(COUNTRIES)
N_BANKS = 30
N_REGIONS = 5

CHANNELS = ("card", "salary", "ach", "p2p", "wire", "cash_deposit")
CARD, SALARY, ACH, P2P, WIRE, CASH = range(len(CHANNELS))

TYPOLOGIES = (
    "fan_in", "fan_out", "cycle", "scatter_gather", "gather_scatter",
    "bipartite", "stack", "random", "structuring", "pass_through",
)

PERSON, MERCHANT, EMPLOYER = 0, 1, 2

#: The worlds ``source.realism`` chooses between (the realistic one lives in realistic.py).
REALISMS = ("simple", "realistic")
#: How each world fills the accounts with events: ``(rng, world, laundering_rate, mix,
#: reporting_threshold) -> _Batch``. The simple world's is defined below; realistic.py,
#: which builds on this module's helpers, adds its own (the ``sources`` package imports it),
#: so this module never imports the one that imports it.
SIMULATE: dict[str, Callable[..., "_Batch"]] = {}

#: Target volume: transactions per account per day (documented in the module doc).
TX_PER_ACCOUNT_DAY = 0.55
MIN_ACCOUNTS = 200
MIN_DAYS = 7  # laundering instances span up to a week

DAY = 86_400
HOUR = 3_600


def _profile(weights: list[float]) -> np.ndarray:
    """Normalise 24 hour-of-day weights into probabilities."""
    w = np.asarray(weights, dtype=float)
    assert w.shape == (24,)
    return w / w.sum()


# Local hour-of-day shapes: shops busy at lunch and after work, offices 8-18, bank
# branches and ATMs for cash in daytime. (Salary and standing-order batches run at
# 01:00-05:00 local time; their hour is drawn directly.)
RETAIL_HOURS = _profile([0.3, 0.15, 0.08, 0.05, 0.05, 0.1, 0.3, 0.7, 1.1, 1.3, 1.5, 1.8,
                         2.1, 1.8, 1.5, 1.5, 1.7, 2.0, 2.1, 1.9, 1.5, 1.1, 0.8, 0.5])
OFFICE_HOURS = _profile([0.05] * 7 + [0.4, 1.5, 2.0, 2.0, 2.0, 1.6, 1.8, 2.0, 1.8, 1.5,
                                      1.0, 0.6, 0.4, 0.3, 0.2, 0.1, 0.05])
BRANCH_HOURS = _profile([0.05] * 8 + [0.8, 1.5, 1.8, 1.8, 1.6, 1.7, 1.8, 1.7, 1.4, 0.8]
                        + [0.1, 0.08, 0.05, 0.05, 0.05, 0.05])


# ------------------------------------------------------------------------- batches
@dataclass
class _Batch:
    """Column arrays of a group of transactions (times in seconds since ``start``)."""

    src: np.ndarray
    dst: np.ndarray
    t: np.ndarray
    amount: np.ndarray
    channel: np.ndarray
    typology: np.ndarray | None = None  # index into TYPOLOGIES, -1 = normal
    instance: np.ndarray | None = None  # per-typology instance number, -1 = normal

    def __len__(self) -> int:
        return len(self.src)

    @staticmethod
    def concat(batches: list[_Batch]) -> _Batch:
        """One batch from many, normal ones getting typology/instance -1."""
        def col(name, dtype, fill=None):
            parts = []
            for b in batches:
                v = getattr(b, name)
                parts.append(np.full(len(b), fill, dtype) if v is None else v.astype(dtype, copy=False))
            return np.concatenate(parts) if parts else np.empty(0, dtype)

        return _Batch(col("src", np.int64), col("dst", np.int64), col("t", np.int64),
                      col("amount", np.float64), col("channel", np.int8),
                      col("typology", np.int8, -1), col("instance", np.int64, -1))


# ------------------------------------------------------------------------- helpers
def _segments(sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row -> (owning segment, position inside it) for segments of the given sizes.

    The workhorse that replaces per-instance loops: instance ``i`` of size ``k_i`` becomes
    ``k_i`` consecutive rows.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    seg = np.repeat(np.arange(len(sizes)), sizes)
    starts = np.cumsum(sizes) - sizes
    return seg, np.arange(len(seg)) - starts[seg]


def _segment_cumsum(x: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Cumulative sum of ``x`` restarting at each segment (rows are grouped by ``seg``)."""
    cs = np.cumsum(x)
    first = np.r_[True, seg[1:] != seg[:-1]]
    base = (cs - x)[first]
    return cs - base[np.cumsum(first) - 1]


def _hours(rng: np.random.Generator, n: int, profile: np.ndarray) -> np.ndarray:
    """Seconds into the day with the profile's hour-of-day shape (second resolution)."""
    return rng.choice(24, size=n, p=profile).astype(np.int64) * HOUR + rng.integers(0, HOUR, n)


def _utc(t_local: np.ndarray, country: np.ndarray, days: int) -> np.ndarray:
    """Local clock seconds -> UTC seconds, kept inside the simulated window.

    Events pushed out of the window by the time-zone shift move by one day, so the
    window and the hour-of-day shape are both preserved.
    """
    t = t_local - UTC_OFFSET_H[country] * HOUR
    t = np.where(t < 0, t + DAY, t)
    return np.where(t >= days * DAY, t - DAY, t)


def _zipf_weights(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Popularity weights 1/rank^s with ranks in random order (few giants, long tail)."""
    return 1.0 / (rng.permutation(n) + 1.0) ** exponent


def _pick_by_country(rng, chooser_country, cand_country, weight, p_foreign) -> np.ndarray:
    """For each chooser, a candidate position drawn by weight from the chooser's country.

    With probability ``p_foreign`` (or when the country has no candidate) the draw is over
    all candidates instead: most relationships are domestic, a few cross borders.
    Vectorised via searchsorted on the cumulative weights of country-sorted candidates.
    """
    m = len(chooser_country)
    order = np.argsort(cand_country, kind="stable")
    cum = np.concatenate(([0.0], np.cumsum(weight[order])))
    sorted_country = cand_country[order]
    lo_c = np.searchsorted(sorted_country, np.arange(N_COUNTRIES), "left")
    hi_c = np.searchsorted(sorted_country, np.arange(N_COUNTRIES), "right")
    lo, hi = lo_c[chooser_country], hi_c[chooser_country]
    foreign = (rng.random(m) < p_foreign) | (lo == hi)
    lo = np.where(foreign, 0, lo)
    hi = np.where(foreign, len(order), hi)
    u = cum[lo] + rng.random(m) * (cum[hi] - cum[lo])
    k = np.clip(np.searchsorted(cum, u, "right") - 1, lo, hi - 1)
    return order[k]


def _avoid_self(src: np.ndarray, pos: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Candidate positions with self-payments moved to the next candidate."""
    same = cand[pos] == src
    return np.where(same, (pos + 1) % len(cand), pos)


# ------------------------------------------------------------------------- the world
@dataclass
class _World:
    """Accounts and their static attributes (all arrays indexed by account number)."""

    days: int
    home: int
    kind: np.ndarray
    country: np.ndarray
    bank: np.ndarray
    region: np.ndarray
    persons: np.ndarray
    merchants: np.ndarray
    employers: np.ndarray
    mules: np.ndarray
    actors: np.ndarray
    card_rate: np.ndarray  # per person (aligned with ``persons``): card payments per day
    merchant_scale: np.ndarray  # per merchant: typical ticket in USD
    merchant_pop: np.ndarray  # per merchant: popularity weight
    start_date: np.datetime64 = field(default=np.datetime64("2025-01-01"))

    @property
    def fx(self) -> np.ndarray:
        """Per account: units of its currency per USD."""
        return FX_PER_USD[self.country]


def _bank_countries(home: int) -> np.ndarray:
    """Country of each bank: 8 banks at home, 3 or 2 in every other country (30 in all)."""
    counts = np.full(N_COUNTRIES, 2)
    counts[home] = 8
    others = [c for c in range(N_COUNTRIES) if c != home]
    counts[others[:4]] = 3
    return np.repeat(np.arange(N_COUNTRIES), counts)


def _build_world(rng: np.random.Generator, n: int, days: int, home: int, start_date) -> _World:
    """Accounts, their banks/countries/regions and kinds, and who the criminals are.

    Banks have Zipf-like sizes inside their country; the home country holds ~55 % of the
    accounts. Actors and mules are ordinary persons (disjoint sets), so their laundering
    hides among their own normal payments.
    """
    bank_country = _bank_countries(home)
    share = np.where(np.arange(N_COUNTRIES) == home, 0.55, 0.45 / (N_COUNTRIES - 1))
    within = np.ones(N_BANKS)
    for c in range(N_COUNTRIES):  # ten iterations: Zipf sizes inside each country
        idx = np.flatnonzero(bank_country == c)
        z = 1.0 / np.arange(1, len(idx) + 1) ** 0.8
        within[idx] = z / z.sum()
    p_bank = within * share[bank_country]
    bank = rng.choice(N_BANKS, size=n, p=p_bank / p_bank.sum())
    country = bank_country[bank]
    region = rng.integers(1, N_REGIONS + 1, n)

    n_merch = max(10, round(0.03 * n))
    n_emp = max(5, round(0.01 * n))
    kind = np.zeros(n, dtype=np.int8)
    kind[:n_merch] = MERCHANT
    kind[n_merch:n_merch + n_emp] = EMPLOYER
    kind = rng.permutation(kind)
    persons = np.flatnonzero(kind == PERSON)
    merchants = np.flatnonzero(kind == MERCHANT)
    employers = np.flatnonzero(kind == EMPLOYER)

    shuffled = rng.permutation(persons)
    n_mules = max(20, round(0.006 * n))
    n_actors = max(50, round(0.02 * n))
    mules = np.sort(shuffled[:n_mules])
    actors = np.sort(shuffled[n_mules:n_mules + n_actors])

    card_rate = rng.gamma(2.0, 0.43 / 2.0, len(persons))
    card_rate[np.isin(persons, mules)] *= 0.4  # mules: thin, recently opened accounts
    merchant_scale = rng.lognormal(np.log(30.0), 0.8, len(merchants))
    merchant_pop = _zipf_weights(rng, len(merchants), 1.1)
    return _World(days, home, kind, country, bank, region, persons, merchants, employers, mules,
                  actors, card_rate, merchant_scale, merchant_pop, start_date)


def _month_start_days(w: _World) -> np.ndarray:
    """Day index (relative to start) of the first of every calendar month touching the window."""
    first = w.start_date.astype("datetime64[M]")
    last = (w.start_date + np.timedelta64(w.days, "D")).astype("datetime64[M]")
    months = np.arange(first, last + np.timedelta64(1, "M"))
    return (months.astype("datetime64[D]") - w.start_date).astype(np.int64)


def _day_weights(w: _World, weekend: float) -> np.ndarray:
    """Probability of each day of the window, weekends weighted by ``weekend``."""
    dow = (w.start_date.astype("datetime64[D]").astype(np.int64) + 3 + np.arange(w.days)) % 7  # 0 = Monday
    p = np.where(dow >= 5, weekend, 1.0)
    return p / p.sum()


# ------------------------------------------------------------------------- normal behaviour
def _salaries(rng, w: _World) -> _Batch:
    """Monthly salaries employer -> person: the legitimate high fan-out accounts.

    Each employed person has one employer (mostly domestic, Zipf-sized employers) and a
    stable lognormal salary paid on the employer's pay day +-1 day in a night batch.
    """
    employed_p = np.where(np.isin(w.persons, w.mules), 0.3, 0.85)
    staff = w.persons[rng.random(len(w.persons)) < employed_p]
    emp = _pick_by_country(rng, w.country[staff], w.country[w.employers],
                           _zipf_weights(rng, len(w.employers), 1.0), p_foreign=0.03)
    salary_usd = rng.lognormal(np.log(3200.0), 0.45, len(staff))
    month_day = _month_start_days(w)
    n_months = len(month_day)
    pay_dom = rng.choice(np.array([1, 15, 25, 28]), len(w.employers))
    batch_hour = rng.integers(1, 6, len(w.employers))
    jitter = rng.integers(-1, 2, (len(w.employers), n_months))

    person = np.repeat(np.arange(len(staff)), n_months)
    month = np.tile(np.arange(n_months), len(staff))
    e = emp[person]
    day = month_day[month] + pay_dom[e] - 1 + jitter[e, month]
    keep = (day >= 0) & (day < w.days)
    person, e, day = person[keep], e[keep], day[keep]
    src = w.employers[e]
    t = day * DAY + batch_hour[e] * HOUR + rng.integers(0, HOUR, len(day))
    return _Batch(src, staff[person], _utc(t, w.country[src], w.days),
                  salary_usd[person] * w.fx[src], np.full(len(day), SALARY))


def _standing_orders(rng, w: _World) -> _Batch:
    """Rent and other standing orders: fixed amount, fixed day, every month.

    Payees are "landlord" persons with Zipf popularity, so some persons legitimately
    collect the same amount from many payers every month.
    """
    n_orders = rng.choice(3, size=len(w.persons), p=[0.35, 0.45, 0.20])
    payer = np.repeat(w.persons, n_orders)
    landlords = rng.choice(w.persons, size=max(5, len(w.persons) // 20), replace=False)
    pos = _pick_by_country(rng, w.country[payer], w.country[landlords],
                           _zipf_weights(rng, len(landlords), 0.5), p_foreign=0.02)
    payee = landlords[_avoid_self(payer, pos, landlords)]
    amount_usd = rng.lognormal(np.log(650.0), 0.7, len(payer))
    dom = rng.integers(1, 29, len(payer))
    hour = rng.integers(1, 6, len(payer))

    month_day = _month_start_days(w)
    order, month = _segments(np.full(len(payer), len(month_day)))
    day = month_day[month] + dom[order] - 1
    keep = (day >= 0) & (day < w.days)
    order, day = order[keep], day[keep]
    src = payer[order]
    t = day * DAY + hour[order] * HOUR + rng.integers(0, HOUR, len(day))
    return _Batch(src, payee[order], _utc(t, w.country[src], w.days),
                  amount_usd[order] * w.fx[src], np.full(len(day), ACH))


def _card_payments(rng, w: _World) -> tuple[_Batch, np.ndarray, np.ndarray, np.ndarray]:
    """Retail card payments person -> merchant: the bulk of the volume.

    Poisson counts per person (rate varies between persons), mostly at domestic merchants
    chosen by Zipf popularity; amounts are a lognormal body around the merchant's typical
    ticket with a 3 % Pareto tail. Also returns each payment's merchant and USD amount for
    the merchants' revenue sweeps.
    """
    count = rng.poisson(w.card_rate * w.days)
    payer = np.repeat(w.persons, count)
    n = len(payer)
    day = rng.choice(w.days, size=n, p=_day_weights(w, 1.25))
    m = _pick_by_country(rng, w.country[payer], w.country[w.merchants], w.merchant_pop, p_foreign=0.04)
    usd = w.merchant_scale[m] * rng.lognormal(0.0, 0.7, n)
    tail = rng.random(n) < 0.03
    usd = np.where(tail, w.merchant_scale[m] * 4.0 * (1.0 + rng.pareto(1.4, n)), usd)
    usd = np.minimum(usd, 50_000.0)
    t = day * DAY + _hours(rng, n, RETAIL_HOURS)
    batch = _Batch(payer, w.merchants[m], _utc(t, w.country[payer], w.days),
                   usd * w.fx[payer], np.full(n, CARD))
    return batch, m, usd, day


def _p2p(rng, w: _World) -> _Batch:
    """Person-to-person transfers, mostly inside a small social neighbourhood.

    Persons are lined up by country; a payee is a few places away in that line, so each
    person has a stable circle of partners. 5 % go to anyone (often abroad); large or
    cross-border transfers travel as ``wire``.
    """
    count = rng.poisson(0.06 * w.days, len(w.persons))
    payer_i = np.repeat(np.arange(len(w.persons)), count)
    n = len(payer_i)
    line = np.lexsort((rng.random(len(w.persons)), w.country[w.persons]))
    place = np.empty_like(line)
    place[line] = np.arange(len(line))
    step = rng.geometric(0.08, n) * np.where(rng.random(n) < 0.5, -1, 1)
    payee_i = line[(place[payer_i] + step) % len(line)]
    anyone = rng.random(n) < 0.05
    payee_i = np.where(anyone, rng.integers(0, len(w.persons), n), payee_i)
    payee_i = np.where(payee_i == payer_i, line[(place[payer_i] + 1) % len(line)], payee_i)
    src, dst = w.persons[payer_i], w.persons[payee_i]
    usd = rng.lognormal(np.log(90.0), 1.1, n)
    channel = np.where((usd > 2500.0) | (w.country[src] != w.country[dst]), WIRE, P2P)
    day = rng.integers(0, w.days, n)
    t = day * DAY + _hours(rng, n, RETAIL_HOURS)
    return _Batch(src, dst, _utc(t, w.country[src], w.days), usd * w.fx[src], channel)


def _cash_deposits(rng, w: _World) -> _Batch:
    """Cash paid into one's own account (sender = receiver, as AMLworld records it).

    Persons do it rarely with small sums; merchants bank their takings several times a
    week, with amounts that reach the reporting threshold, so near-threshold cash is not
    by itself suspicious.
    """
    p_count = rng.poisson(0.012 * w.days, len(w.persons))
    m_count = rng.poisson(0.25 * w.days, len(w.merchants))
    acct = np.concatenate((np.repeat(w.persons, p_count), np.repeat(w.merchants, m_count)))
    m_i = np.repeat(np.arange(len(w.merchants)), m_count)
    usd = np.concatenate((rng.lognormal(np.log(350.0), 1.0, p_count.sum()),
                          w.merchant_scale[m_i] * 25.0 * rng.lognormal(0.0, 0.6, len(m_i))))
    n = len(acct)
    day = rng.integers(0, w.days, n)
    t = day * DAY + _hours(rng, n, BRANCH_HOURS)
    return _Batch(acct, acct, _utc(t, w.country[acct], w.days), usd * w.fx[acct], np.full(n, CASH))


def _merchant_payouts(rng, w: _World, card_m, card_usd, card_day) -> _Batch:
    """Merchants' outgoing money: weekly revenue sweeps and supplier payments.

    The sweep moves ~85 % of last week's card revenue to the owner's personal account
    (a large, regular, legitimate transfer); suppliers are other businesses of the same
    country paid by wire.
    """
    n_m = len(w.merchants)
    weeks = -(-w.days // 7)
    revenue = np.bincount(card_m * weeks + card_day // 7, weights=card_usd,
                          minlength=n_m * weeks).reshape(n_m, weeks)
    owner_pos = _pick_by_country(rng, w.country[w.merchants], w.country[w.persons],
                                 np.ones(len(w.persons)), p_foreign=0.0)
    sweep_dow = rng.integers(0, 7, n_m)
    m, week = _segments(np.full(n_m, weeks))
    day = 7 * (week + 1) + sweep_dow[m]
    keep = (day < w.days) & (revenue[m, week] > 0)
    m, week, day = m[keep], week[keep], day[keep]
    src = w.merchants[m]
    t = day * DAY + _hours(rng, len(m), OFFICE_HOURS)
    sweeps = _Batch(src, w.persons[owner_pos[m]], _utc(t, w.country[src], w.days),
                    0.85 * revenue[m, week] * w.fx[src], np.full(len(m), ACH))

    count = rng.poisson(0.12 * w.days, n_m)
    s_i = np.repeat(np.arange(n_m), count)
    src = w.merchants[s_i]
    business = np.concatenate((w.merchants, w.employers))
    pos = _pick_by_country(rng, w.country[src], w.country[business], np.ones(len(business)), p_foreign=0.1)
    dst = business[_avoid_self(src, pos, business)]
    usd = w.merchant_scale[s_i] * 40.0 * rng.lognormal(0.0, 0.8, len(s_i))
    t = rng.integers(0, w.days, len(s_i)) * DAY + _hours(rng, len(s_i), OFFICE_HOURS)
    suppliers = _Batch(src, dst, _utc(t, w.country[src], w.days), usd * w.fx[src], np.full(len(s_i), WIRE))
    return _Batch.concat([sweeps, suppliers])


def _normal(rng, w: _World) -> _Batch:
    """All legitimate activity of the window."""
    card, card_m, card_usd, card_day = _card_payments(rng, w)
    return _Batch.concat([
        _salaries(rng, w), card, _standing_orders(rng, w), _p2p(rng, w), _cash_deposits(rng, w),
        _merchant_payouts(rng, w, card_m, card_usd, card_day),
    ])


# ------------------------------------------------------------------------- laundering
class _Pool:
    """Accounts that can play one laundering role, laid out so instances get distinct members.

    An instance takes consecutive entries (mod the pool size) from a random offset, either
    in the country-sorted layout (a domestic scheme) or in a shuffled global layout (a
    cross-border one); consecutive entries are distinct accounts by construction.
    """

    def __init__(self, rng, members: np.ndarray, country: np.ndarray):
        self.glob = rng.permutation(members)
        self.loc = self.glob[np.argsort(country[self.glob], kind="stable")]
        sorted_country = country[self.loc]
        self.seg_start = np.searchsorted(sorted_country, np.arange(N_COUNTRIES), "left")
        self.seg_count = np.searchsorted(sorted_country, np.arange(N_COUNTRIES), "right") - self.seg_start

    def block(self, rng, country: np.ndarray, need: np.ndarray, p_local: float) -> _Block:
        """Member assignment for instances based in ``country`` needing ``need`` members each."""
        n = len(country)
        local = (rng.random(n) < p_local) & (self.seg_count[country] >= need)
        return _Block(self, country, local, rng.integers(0, 2**31, n))


@dataclass
class _Block:
    """Which pool members the instances of one typology use (see :class:`_Pool`)."""

    pool: _Pool
    country: np.ndarray
    local: np.ndarray
    offset: np.ndarray

    def __call__(self, inst: np.ndarray, j) -> np.ndarray:
        """Account of member ``j`` of instance ``inst`` (both arrays, or j a scalar)."""
        p = self.pool
        j = np.broadcast_to(np.asarray(j, dtype=np.int64), inst.shape)
        c = self.country[inst]
        k = self.offset[inst] + j
        loc = p.loc[np.minimum(p.seg_start[c] + k % np.maximum(p.seg_count[c], 1), len(p.loc) - 1)]
        glob = p.glob[k % len(p.glob)]
        return np.where(self.local[inst], loc, glob)


def _r(rng, lo: int, hi: int, n: int) -> np.ndarray:
    """Integers uniform in [lo, hi] (inclusive)."""
    return rng.integers(lo, hi + 1, n)


# Shapes: per-instance sizes, the number of transactions and of actor/mule members.
def _shape(rng, typology: str, n: int) -> dict[str, np.ndarray]:
    """Random sizes of ``n`` instances of a typology and what they need.

    Kept separate from building so the expected transactions per instance (used to turn
    ``laundering_rate`` into an instance count) comes from the very same distributions.
    """
    one = np.ones(n, dtype=np.int64)
    if typology in ("fan_in", "fan_out"):
        k = _r(rng, 4, 14, n)
        return dict(k=k, n_tx=k, actors=one, mules=k, span=_r(rng, 1, 4, n))
    if typology == "cycle":
        k = _r(rng, 3, 10, n)
        return dict(k=k, n_tx=k, actors=one, mules=k - 1)
    if typology == "scatter_gather":
        k = _r(rng, 3, 8, n)
        return dict(k=k, n_tx=2 * k, actors=2 * one, mules=k)
    if typology == "gather_scatter":
        k, m = _r(rng, 2, 6, n), _r(rng, 2, 6, n)
        return dict(k=k, m=m, n_tx=k + m, actors=k + m, mules=one)
    if typology == "bipartite":
        a, b = _r(rng, 2, 4, n), _r(rng, 2, 4, n)
        return dict(a=a, b=b, n_tx=a * b, actors=a, mules=b, span=_r(rng, 1, 4, n))
    if typology == "stack":
        w0, w1, w2 = _r(rng, 2, 3, n), _r(rng, 2, 3, n), _r(rng, 2, 3, n)
        return dict(w0=w0, w1=w1, w2=w2, n_tx=w0 * w1 + w1 * w2, actors=w0 + w2, mules=w1)
    if typology == "random":
        s, steps = _r(rng, 3, 6, n), _r(rng, 5, 14, n)
        return dict(s=s, n_tx=steps, actors=one, mules=s - 1)
    if typology == "structuring":
        k = _r(rng, 6, 16, n)
        return dict(k=k, n_tx=k, actors=one, mules=3 * one, span=_r(rng, 2, 6, n))
    if typology == "pass_through":
        rounds = _r(rng, 2, 6, n)
        return dict(n_tx=2 * rounds, actors=2 * one, mules=one)
    raise AssertionError(typology)


def _mean_size(typology: str) -> float:
    """Expected transactions per instance, from the shape distributions themselves."""
    return float(_shape(np.random.default_rng(0), typology, 4096)["n_tx"].mean())


def _channels(rng, n: int) -> np.ndarray:
    """Channels of layering transfers: the ordinary transfer channels (no card, no salary)."""
    return rng.choice(np.array([P2P, WIRE, ACH], dtype=np.int8), size=n, p=[0.55, 0.15, 0.30])


def _gaps(rng, n: int) -> np.ndarray:
    """Delays between consecutive hops: 30 min plus an exponential (mean 5 h) capped at 9 h."""
    return 1800 + np.minimum(rng.exponential(5 * HOUR, n), 9 * HOUR).astype(np.int64)


def _jitter(rng, n: int, spread: float = 0.15) -> np.ndarray:
    """Multiplicative noise so amounts inside an instance are similar, not equal."""
    return rng.uniform(1 - spread, 1 + spread, n)


def _spread(rng, inst, span) -> np.ndarray:
    """Offsets spread over the instance's ``span`` days, office-hour shaped."""
    day = np.floor(rng.random(len(inst)) * span[inst]).astype(np.int64)
    return day * DAY + _hours(rng, len(inst), OFFICE_HOURS)


def _build(rng, typology, sh, A: _Block, M: _Block, base, threshold):
    """Rows of all instances of one typology: (instance, src, dst, offset s, USD amount, channel).

    ``offset`` counts seconds from local midnight of the instance's first day. Amounts are
    in USD except for structuring, whose amounts are already in the sender's currency
    (the channel array is None when the ordinary transfer mix applies).
    """
    inst, pos = _segments(sh["n_tx"])
    n = len(inst)
    zero = np.zeros(n, dtype=np.int64)
    channel = None

    def node(j):  # cycle/random members: 0 is the actor, 1.. are mules
        return np.where(j == 0, A(inst, zero), M(inst, np.maximum(j - 1, 0)))

    if typology == "fan_in":
        src, dst = M(inst, pos), A(inst, zero)
        offset, amount = _spread(rng, inst, sh["span"]), base[inst] * _jitter(rng, n)
    elif typology == "fan_out":
        src, dst = A(inst, zero), M(inst, pos)
        offset, amount = _spread(rng, inst, sh["span"]), base[inst] * _jitter(rng, n)
    elif typology == "cycle":
        k = sh["k"][inst]
        src, dst = node(pos), node((pos + 1) % k)
        decay = rng.uniform(0.01, 0.05, len(sh["k"]))[inst]
        amount = base[inst] * (1 - decay) ** pos
        first = _hours(rng, len(sh["k"]), OFFICE_HOURS)[inst]
        offset = first + _segment_cumsum(np.where(pos == 0, 0, _gaps(rng, n)), inst)
    elif typology == "scatter_gather":
        k = sh["k"][inst]
        back = pos >= k
        j = pos - k * back
        src = np.where(back, M(inst, j), A(inst, zero))
        dst = np.where(back, A(inst, zero + 1), M(inst, j))
        out_amount = base[inst] * _jitter(rng, n)
        out_time = rng.integers(0, 2, n) * DAY + _hours(rng, n, OFFICE_HOURS)
        row = np.arange(n)
        partner = np.where(back, row - k, row)  # the scatter leg this gather leg returns
        fee = rng.uniform(0.02, 0.06, len(sh["k"]))[inst]
        amount = np.where(back, out_amount[partner] * (1 - fee), out_amount)
        offset = np.where(back, out_time[partner] + rng.integers(2 * HOUR, 40 * HOUR, n), out_time)
    elif typology == "gather_scatter":
        k, m = sh["k"][inst], sh["m"][inst]
        out = pos >= k
        src = np.where(out, M(inst, zero), A(inst, pos))
        dst = np.where(out, A(inst, pos), M(inst, zero))
        inflow = base[inst] * _jitter(rng, n, 0.3)
        total = np.bincount(inst, weights=np.where(out, 0.0, inflow), minlength=len(sh["k"]))
        fee = rng.uniform(0.02, 0.06, len(sh["k"]))[inst]
        amount = np.where(out, total[inst] * (1 - fee) / m * _jitter(rng, n, 0.1), inflow)
        day = np.where(out, 2 + rng.integers(0, 2, n), rng.integers(0, 2, n))
        offset = day * DAY + _hours(rng, n, OFFICE_HOURS)
    elif typology == "bipartite":
        b = sh["b"][inst]
        src, dst = A(inst, pos // b), M(inst, pos % b)
        offset, amount = _spread(rng, inst, sh["span"]), base[inst] * _jitter(rng, n)
    elif typology == "stack":
        w0, w1, w2 = sh["w0"][inst], sh["w1"][inst], sh["w2"][inst]
        second = pos >= w0 * w1
        q = pos - second * w0 * w1
        src = np.where(second, M(inst, q // w2), A(inst, q // w1))
        dst = np.where(second, A(inst, w0 + q % w2), M(inst, q % w1))
        fee = rng.uniform(0.02, 0.06, len(sh["w0"]))[inst]
        amount = base[inst] * np.where(second, w0 / w2 * (1 - fee), 1.0) * _jitter(rng, n, 0.1)
        day = np.where(second, 1 + rng.integers(0, 2, n), 0)
        offset = day * DAY + _hours(rng, n, OFFICE_HOURS)
    elif typology == "random":
        s = sh["s"][inst]
        step = np.floor(rng.random(n) * (s - 1)).astype(np.int64) + 1  # never stay put
        at = _segment_cumsum(step, inst)
        src, dst = node((at - step) % s), node(at % s)
        amount = base[inst] * _jitter(rng, n, 0.25)
        first = _hours(rng, len(sh["s"]), RETAIL_HOURS)[inst]
        offset = first + _segment_cumsum(np.where(pos == 0, 0, _gaps(rng, n)), inst)
    elif typology == "structuring":
        cash = rng.random(n) < 0.6
        dst = A(inst, zero)
        src = np.where(cash, dst, M(inst, pos % 3))
        channel = np.where(cash, CASH, P2P).astype(np.int8)
        amount = threshold * rng.uniform(0.85, 0.99, n)
        if threshold >= 1000:  # half of them round figures, still below the threshold
            amount = np.where(rng.random(n) < 0.5, np.floor(amount / 10) * 10, amount)
        day = np.floor(rng.random(n) * sh["span"][inst]).astype(np.int64)
        offset = day * DAY + np.where(cash, _hours(rng, n, BRANCH_HOURS), _hours(rng, n, RETAIL_HOURS))
    elif typology == "pass_through":
        leg = pos % 2
        src = np.where(leg == 1, M(inst, zero), A(inst, zero))
        dst = np.where(leg == 1, A(inst, zero + 1), M(inst, zero))
        row = np.arange(n)
        inflow = base[inst] * _jitter(rng, n, 0.3)
        # Rounds follow each other: the next deposit comes after the mule forwarded the last.
        wait = 9 * HOUR + np.minimum(rng.exponential(10 * HOUR, n), 15 * HOUR).astype(np.int64)
        first = _hours(rng, len(sh["n_tx"]), OFFICE_HOURS)[inst]
        t_in = first + _segment_cumsum(np.where((leg == 1) | (pos == 0), 0, wait), inst)
        delay = 300 + np.minimum(rng.exponential(1.5 * HOUR, n), 8 * HOUR).astype(np.int64)
        prev = np.maximum(row - 1, 0)
        amount = np.where(leg == 1, inflow[prev] * rng.uniform(0.90, 0.98, n), inflow)
        offset = np.where(leg == 1, t_in[prev] + delay, t_in)
    else:  # pragma: no cover - TYPOLOGIES and this chain are kept in step by the tests
        raise AssertionError(typology)
    return inst, src, dst, offset.astype(np.int64), amount, channel


def _place(rng, inst: np.ndarray, offset: np.ndarray, country: np.ndarray, days: int) -> np.ndarray:
    """UTC times of instance rows: a uniform start day, the offsets, the home country's clock.

    An instance is moved as a whole (by one day) when the time-zone shift pushes it over
    an edge of the window, so the order of its hops is never disturbed.
    """
    n = len(country)
    span_days = np.zeros(n, dtype=np.int64)
    np.maximum.at(span_days, inst, offset // DAY + 1)
    start_day = np.floor(rng.random(n) * np.maximum(days - span_days + 1, 1)).astype(np.int64)
    t = start_day[inst] * DAY + offset - UTC_OFFSET_H[country[inst]] * HOUR
    lo = np.full(n, np.iinfo(np.int64).max)
    hi = np.full(n, np.iinfo(np.int64).min)
    np.minimum.at(lo, inst, t)
    np.maximum.at(hi, inst, t)
    shift = np.where(lo < 0, DAY, np.where(hi >= days * DAY, -DAY, 0))
    return np.clip(t + shift[inst], 0, days * DAY - 1)  # the clip only guards the edges


def _allocate(n_instances: float, weights: dict[str, float]) -> dict[str, int]:
    """Split ``round(n_instances)`` between typologies by weight (largest remainder), >= 1 each.

    Largest-remainder rounding keeps the total right when there are few instances per
    typology (plain rounding of 1.4 instances ten times would lose a third of them).
    """
    names = list(weights)
    share = np.array([weights[t] for t in names]) / sum(weights.values())
    total = max(len(names), round(n_instances))
    exact = share * total
    n = np.floor(exact).astype(np.int64)
    rest = total - n.sum()
    n[np.argsort(-(exact - n), kind="stable")[:rest]] += 1
    return {t: max(1, int(k)) for t, k in zip(names, n)}


def _laundering(rng, w: _World, n_normal: int, rate: float, mix: dict[str, float], threshold: float) -> _Batch:
    """Labelled laundering instances sized so they make up ~``rate`` of all transactions.

    The instance count follows from the normal volume and the expected size of each
    typology; every typology with a positive weight gets at least one instance. Instance
    start days are uniform over the window, the instance's hours follow its home country's
    clock.
    """
    weights = {t: mix.get(t, 0.0) for t in TYPOLOGIES if mix.get(t, 0.0) > 0}
    total_w = sum(weights.values())
    per_instance = sum(wt / total_w * _mean_size(t) for t, wt in weights.items())
    n_instances = rate * n_normal / (1.0 - rate) / per_instance
    counts = _allocate(n_instances, weights)
    actors = _Pool(rng, w.actors, w.country)
    mules = _Pool(rng, w.mules, w.country)
    batches = []
    for code, typology in enumerate(TYPOLOGIES):  # ten iterations
        if typology not in weights:
            continue
        n = counts[typology]
        sh = _shape(rng, typology, n)
        if typology == "structuring":  # the threshold is the home jurisdiction's
            country = np.full(n, w.home)
        else:
            country = w.country[actors.glob[rng.integers(0, len(actors.glob), n)]]
        # A country without enough actors/mules for the instance: run it from the home market.
        short = (actors.seg_count[country] < sh["actors"]) | (mules.seg_count[country] < sh["mules"])
        country = np.where(short, w.home, country)
        A = actors.block(rng, country, sh["actors"], p_local=0.92)
        M = mules.block(rng, country, sh["mules"], p_local=0.92)
        base = rng.lognormal(np.log(600.0), 1.0, n)
        inst, src, dst, offset, amount, channel = _build(rng, typology, sh, A, M, base, threshold)
        if channel is None:
            channel = _channels(rng, len(inst))
            amount = amount * w.fx[src]
        t = _place(rng, inst, offset, country, w.days)
        batches.append(_Batch(src, dst, t, amount, channel,
                              np.full(len(inst), code, dtype=np.int8), inst))
    return _Batch.concat(batches)


def _simulate_simple(rng, w: _World, rate: float, mix: dict[str, float], threshold: float) -> _Batch:
    """Normal behaviour, then the labelled laundering of the simple world."""
    normal = _normal(rng, w)
    return _Batch.concat([normal, _laundering(rng, w, len(normal), rate, mix, threshold)])


SIMULATE["simple"] = _simulate_simple


# ------------------------------------------------------------------------- behaviour shift
def _shift(b: _Batch, amount_scale: float, moves: dict[int, int], share: float, from_s: int, seed: int) -> _Batch:
    """The same events with changed behaviour from ``from_s`` on (``source.shift``).

    Amounts are scaled and ``share`` of each moved channel's events take the new channel.
    The draws come from their own stream, so the simulation itself is untouched: a shifted
    world holds the same accounts and events as the unshifted one, only changed.
    """
    after = b.t >= from_s
    amount = np.where(after, b.amount * amount_scale, b.amount)
    channel = b.channel.copy()
    u = np.random.default_rng([seed, 1]).random(len(b))
    for old, new in moves.items():
        channel[after & (b.channel == old) & (u < share)] = new
    return replace(b, amount=amount, channel=channel)


# ------------------------------------------------------------------------- frame
def _frame(b: _Batch, w: _World, start_s: int) -> pl.DataFrame:
    """The canonical frame: sort by time (generation order breaks ties), format ids once."""
    order = np.argsort(b.t, kind="stable")
    src, dst = b.src[order], b.dst[order]
    n = len(order)
    amount = np.maximum(np.round(b.amount[order], 2), 0.01)
    id_width = max(7, len(str(max(n - 1, 0))))
    acct_width = max(6, len(str(len(w.kind) - 1)))
    label = (b.typology[order] >= 0).astype(np.int8)
    codes = pl.DataFrame({
        "i": np.arange(n, dtype=np.int64),
        "t": (b.t[order] + start_s) * 1_000_000,
        "src": src, "dst": dst, "amount": amount,
        "ch": b.channel[order], "sb": w.bank[src], "db": w.bank[dst],
        "sc": w.country[src], "dc": w.country[dst], "reg": w.region[src],
        "dkind": w.kind[dst], "label": label, "typ": b.typology[order], "inst": b.instance[order],
    })

    def names(col: str, values) -> pl.Expr:
        """Integer codes -> their names (code -1 -> null)."""
        return pl.col(col).replace_strict(dict(enumerate(values)), default=None, return_dtype=pl.String)

    acct = lambda col: pl.lit("A") + pl.col(col).cast(pl.String).str.zfill(acct_width)  # noqa: E731
    bank = lambda col: pl.lit("B") + pl.col(col).cast(pl.String).str.zfill(3)  # noqa: E731
    typology = names("typ", TYPOLOGIES)
    frame = codes.select(
        event_id=pl.lit("synthetic-") + pl.col("i").cast(pl.String).str.zfill(id_width),
        event_time=pl.col("t").cast(pl.Datetime("us", "UTC")),
        src_account=acct("src"),
        dst_account=acct("dst"),
        amount=pl.col("amount"),
        currency=names("sc", CURRENCIES),
        channel=names("ch", CHANNELS),
        src_bank=bank("sb"),
        dst_bank=bank("db"),
        src_country=names("sc", COUNTRIES),
        dst_country=names("dc", COUNTRIES),
        jurisdiction=names("sc", COUNTRIES),
        merchant=pl.when(pl.col("dkind") == MERCHANT).then(acct("dst")),
        region=names("sc", COUNTRIES) + pl.lit("-") + pl.col("reg").cast(pl.String),
        label=pl.col("label"),
        typology=typology,
        instance_id=pl.lit("synthetic-") + typology + pl.lit("-") + pl.col("inst").cast(pl.String),
    )
    return conform(frame, keep_extra=False)


# ------------------------------------------------------------------------- the source
def _is_int(x: Any) -> bool:
    """An integer that is not a bool (True would otherwise pass as 1)."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    """A real number that is not a bool."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


class SyntheticSource(Source):
    """Simulated multi-bank transactions with labelled laundering (see the module doc).

    ~0.55 transactions per account per day: ``n_accounts=20000, days=90`` gives about
    one million rows. Parameters are those of ``SyntheticSourceConfig``; they are only
    stored here and validated when :meth:`read` runs.
    """

    name = "synthetic"
    has_labels = True

    def __init__(
        self,
        n_accounts: int = 20_000,
        days: int = 90,
        start: str = "2025-01-01T00:00:00Z",
        laundering_rate: float = 0.004,
        typology_mix: Mapping[str, float] | None = None,
        reporting_threshold: float = 10_000.0,
        seed: int = 42,
        jurisdiction: str = "US",
        realism: str = "simple",
        shift: Mapping[str, Any] | None = None,
    ):
        self.n_accounts = n_accounts
        self.days = days
        self.start = start
        self.laundering_rate = laundering_rate
        self.typology_mix = {t: 1.0 for t in TYPOLOGIES} if typology_mix is None else typology_mix
        self.reporting_threshold = reporting_threshold
        self.seed = seed
        self.jurisdiction = jurisdiction
        self.realism = realism
        self.shift = dict(shift or {})

    def describe(self) -> str:
        """One line with every parameter (for logs and run summaries); never validates."""
        mix = self.typology_mix
        try:
            active = sum(1 for v in mix.values() if float(v) > 0)
        except (TypeError, ValueError, AttributeError):
            active = "?"
        return (f"synthetic: {self.n_accounts} accounts x {self.days} days from {self.start}, "
                f"laundering_rate={self.laundering_rate} over {active} typologies, "
                f"reporting_threshold={self.reporting_threshold}, seed={self.seed}, "
                f"jurisdiction={self.jurisdiction}, realism={self.realism}"
                + (f", shift={self.shift}" if self._shifts() else ""))

    def _shifts(self) -> bool:
        """Whether ``source.shift`` changes anything (the defaults do not)."""
        s = self.shift
        return s.get("amount_scale", 1.0) != 1.0 or bool(s.get("channels"))

    # ---------------------------------------------------------------- validation
    def _start_seconds(self) -> tuple[int, np.datetime64]:
        """Start as UTC epoch seconds and its UTC calendar date; naive text counts as UTC."""
        dt = config_time(self.start, "source.start")
        return int(dt.timestamp()), np.datetime64(dt.date().isoformat(), "D")

    def _mix(self) -> dict[str, float]:
        """typology_mix as plain floats, checked: known names, finite weights >= 0, one > 0."""
        mix = self.typology_mix
        if not hasattr(mix, "items"):
            raise ConfigError(f"source.typology_mix must be a mapping of typology -> weight; "
                              f"allowed typologies: {', '.join(sorted(TYPOLOGIES))}")
        out = {}
        for key, value in mix.items():
            if key not in TYPOLOGIES:
                raise ConfigError(f"source.typology_mix: unknown typology {key!r}; "
                                  f"allowed: {', '.join(sorted(TYPOLOGIES))}")
            if not _is_number(value) or not math.isfinite(float(value)) or float(value) < 0:
                raise ConfigError(f"source.typology_mix.{key} must be a finite number >= 0 (got {value!r})")
            out[str(key)] = float(value)
        if not any(v > 0 for v in out.values()):
            raise ConfigError("source.typology_mix: at least one typology needs a weight > 0")
        return out

    def _validate(self) -> tuple[int, np.datetime64, dict[str, float], int]:
        """Check every parameter, naming the full config key on failure."""
        if not _is_int(self.n_accounts) or self.n_accounts < MIN_ACCOUNTS:
            raise ConfigError(f"source.n_accounts must be >= {MIN_ACCOUNTS} (got {self.n_accounts!r})")
        if not _is_int(self.days) or self.days < MIN_DAYS:
            raise ConfigError(f"source.days must be an integer >= {MIN_DAYS} (got {self.days!r})")
        if not _is_number(self.laundering_rate) or not 0 < float(self.laundering_rate) < 0.5:
            raise ConfigError(f"source.laundering_rate must be in (0, 0.5) (got {self.laundering_rate!r})")
        if (not _is_number(self.reporting_threshold) or not math.isfinite(float(self.reporting_threshold))
                or float(self.reporting_threshold) < 100):
            raise ConfigError(f"source.reporting_threshold must be a number >= 100 (got {self.reporting_threshold!r})")
        if not _is_int(self.seed) or self.seed < 0:
            raise ConfigError(f"source.seed must be an integer >= 0 (got {self.seed!r})")
        if self.jurisdiction not in COUNTRIES:
            raise ConfigError(f"source.jurisdiction: {self.jurisdiction!r} is not a simulated country; "
                              f"allowed: {', '.join(COUNTRIES)}")
        if self.realism not in REALISMS:
            raise ConfigError(f"source.realism: unknown world {self.realism!r}; allowed: {', '.join(REALISMS)}")
        start_s, start_date = self._start_seconds()
        return start_s, start_date, self._mix(), COUNTRIES.index(self.jurisdiction)

    def _shift_params(self) -> tuple[float, dict[int, int], float, int] | None:
        """source.shift checked: (amount scale, channel code moves, share, first day), None if no shift."""
        s = self.shift
        unknown = set(s) - {"amount_scale", "channels", "channel_share", "from_day"}
        if unknown:
            raise ConfigError(f"source.shift: unknown key {sorted(unknown)[0]!r}; allowed: amount_scale, channels, "
                              f"channel_share, from_day")
        scale, share, day = s.get("amount_scale", 1.0), s.get("channel_share", 0.5), s.get("from_day", 0)
        if not _is_number(scale) or not math.isfinite(float(scale)) or float(scale) <= 0:
            raise ConfigError(f"source.shift.amount_scale must be a number > 0 (got {scale!r})")
        if not _is_number(share) or not 0 <= float(share) <= 1:
            raise ConfigError(f"source.shift.channel_share must be in [0, 1] (got {share!r})")
        if not _is_int(day) or not 0 <= day < int(self.days):
            raise ConfigError(f"source.shift.from_day must be an integer in [0, source.days) (got {day!r})")
        channels = s.get("channels") or {}
        if not hasattr(channels, "items"):
            raise ConfigError(f"source.shift.channels must map channel -> channel; allowed: {', '.join(CHANNELS)}")
        moves = {}
        for old, new in channels.items():
            bad = next((v for v in (old, new) if v not in CHANNELS), None)
            if bad is not None:
                raise ConfigError(f"source.shift.channels.{old}: unknown channel {bad!r}; allowed: {', '.join(CHANNELS)}")
            moves[CHANNELS.index(old)] = CHANNELS.index(new)
        if not self._shifts():
            return None
        return float(scale), moves, float(share), int(day) * DAY

    # ---------------------------------------------------------------- simulation
    def read(self) -> pl.DataFrame:
        """Simulate the window and return it in the canonical schema, sorted by time."""
        start_s, start_date, mix, home = self._validate()
        shift = self._shift_params()
        with status(f"simulating {self.n_accounts} accounts x {self.days} days"):
            rng = np.random.default_rng(int(self.seed))
            world = _build_world(rng, int(self.n_accounts), int(self.days), home, start_date)
            events = SIMULATE[self.realism](rng, world, float(self.laundering_rate), mix,
                                            float(self.reporting_threshold))
            if shift is not None:
                events = _shift(events, *shift, seed=int(self.seed))
            return _frame(events, world, start_s)
