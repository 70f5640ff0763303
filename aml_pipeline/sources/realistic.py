"""The realistic world of the built-in simulator (``source.realism: realistic``).

Problem
-------
The simple world (synthetic.py) is deliberately learnable: laundering never uses the card
or salary channels, it keeps to office hours, and normal traffic has few legitimate
accounts that move money the way launderers do. A model on raw columns plus a few
per-account windows does as well there as a model on flow features, so it cannot tell
whether the features capture *how money moves*.

Solution
--------
The same accounts, banks, countries and normal behaviour as the simple world, plus
legitimate look-alikes of every typology, and laundering that looks like ordinary
transfers column by column. The design follows the published descriptions of the
typologies (FATF money-laundering typology reports: funnel accounts, money mules,
structuring/smurfing, trade and corporate vehicles; the AMLworld paper, Altman et al.
2023, "Realistic Synthetic Financial Transactions for Anti-Money Laundering Models";
AMLSim's alert patterns) and, for each one, what legitimate activity produces the same
shape. docs/data.md, "The realistic world", lists every look-alike beside the typology it
imitates, with its parameters.

*Look-alikes in normal traffic* (rates per person or business per day unless stated):

- salary forwarding (pass_through): 12 % of employed persons move 85-100 % of each
  salary to their own account at another bank within hours of the night payroll batch;
- family round trips and business round trips (cycle): loans repaid, shared costs
  settled, 2-4 persons (0.0025/person/day) or two businesses (0.01/business/day), each hop
  passing on 85-102 % of the last one after hours to days;
- billers (fan_in): utilities, telecoms and insurers (1 per 400 accounts, taken from the
  merchants) collect direct debits from ~0.9 payers per person each month, most of them on
  the biller's due day, so a biller has many distinct senders within 24 h;
- group collections (fan_in then forward): an organiser (0.0004/person/day) collects
  similar, often round, sums from 8-30 friends within 1-2 days and pays 85-100 % of the
  total to a venue or person;
- marketplaces (fan_in and fan_out): the most popular merchants also pay weekly payouts
  (85-95 % of sales, in one batch) to sellers (3 % of persons);
- contractor payments (fan_out): 30 % of businesses pay 3-20 persons every two weeks by
  transfer (not payroll);
- corporate treasury (gather_scatter, scatter_gather): groups of a parent and 3-8
  subsidiaries (1 per 25 businesses); on a business day each subsidiary sweeps its balance
  to the parent at the end of the day with probability 0.5, and the parent pays 85-100 %
  of what it gathered out to 2-6 subsidiaries and suppliers the next business day;
- cash-intensive businesses (structuring): 25 % of merchants deposit cash ~4 times a
  week, amounts around 65 % of the reporting threshold (about one in ten at 85-99 %);
- trade wires and remittances (cross-border): businesses pay foreign suppliers by wire
  (0.06/business/day, 70 % abroad); 6 % of persons wire money home every month;
- mid-size transfers between persons: a fifth of person-to-person transfers are 700 USD
  typical instead of 90 (a holiday paid back, a share of rent, a used car);
- large one-off payments: 2.5 % of persons pay a car, a deposit or tuition (5-60 k USD)
  once, half of them after receiving 100-115 % of it from family a few days before.

*Laundering.* Actors (2 % of persons, plus 10 % of businesses as front companies) and
mules (3 % of persons) are ordinary accounts with their full normal activity (salary,
card, rent, friends), not thin accounts, each taking part in a handful of instances. Every
hop is a transfer whose channel, hour of day and roundness come from the same rules as
normal transfers by the same kind of sender (``_transfer_channel``, ``_later``,
``_round_like``): p2p, ach and wire for transfers, cash deposits for placement. Each
forwarding hop passes on 85-99 % of what the account received (never 100 %), after minutes
to days; amounts carry noise; ~90 % of instances stay inside one country (laundering
crosses borders about as often as normal transfers). Instances start uniformly from
``LEAD_DAYS`` before the window to its end, so instances are cut at both edges: only hops
inside the window appear. The shapes (sizes in docs/data.md) are those of the simple
world, made into flows of money: a fan-in collector forwards what it gathered, a fan-out
hub splits an inflow, cycles, stacks and random walks pass on what they received,
structuring deposits are consolidated by transfer.

Everything is vectorised numpy over rows; loops run over generators, typologies, hop
levels (at most ~20) or rounds only. The random stream continues the simple world's one
``np.random.default_rng(seed)`` after the accounts are built, so a seed gives the same
frame byte for byte.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from aml_pipeline.sources.synthetic import (
    ACH,
    BRANCH_HOURS,
    CASH,
    DAY,
    HOUR,
    OFFICE_HOURS,
    P2P,
    PERSON,
    RETAIL_HOURS,
    SIMULATE,
    TYPOLOGIES,
    UTC_OFFSET_H,
    WIRE,
    _allocate,
    _Batch,
    _Block,
    _card_payments,
    _cash_deposits,
    _hours,
    _merchant_payouts,
    _month_start_days,
    _p2p,
    _pick_by_country,
    _Pool,
    _r,
    _salaries,
    _segment_cumsum,
    _segments,
    _standing_orders,
    _World,
    _zipf_weights,
)

#: Instances may start up to this many days before the window (and are cut there).
LEAD_DAYS = 8
#: Laundering hops pass on this share of what the account received.
KEEP = (0.85, 0.99)
#: Probability that a person's transfer amount is a round figure (normal and laundering).
ROUND_PERSON = 0.4
ROUND_BUSINESS = 0.1
#: Who launders: shares of persons that are actors or mules, of businesses that are fronts.
ACTOR_SHARE = 0.02
MULE_SHARE = 0.03
FRONT_SHARE = 0.1


# ------------------------------------------------------------------------- shared rules
def _transfer_channel(rng, w: _World, src: np.ndarray, dst: np.ndarray, usd: np.ndarray) -> np.ndarray:
    """Channel of a transfer, by the same rule for normal and laundering transfers.

    Persons: p2p (80 %) or ach for small domestic sums, wire or ach (half each) above 2,500 USD,
    wire abroad. Businesses: ach, or wire (35 %, and always abroad).
    """
    n = len(src)
    abroad = w.country[src] != w.country[dst]
    u = rng.random(n)
    person = np.where(usd > 2500.0, np.where(u < 0.5, WIRE, ACH), np.where(u < 0.8, P2P, ACH))
    business = np.where(u < 0.35, WIRE, ACH)
    channel = np.where(w.kind[src] == PERSON, person, business)
    return np.where(abroad, WIRE, channel).astype(np.int8)


def _hour_of(rng, w: _World, src: np.ndarray) -> np.ndarray:
    """Seconds into the local day: retail hours for persons, office hours for businesses."""
    n = len(src)
    return np.where(w.kind[src] == PERSON, _hours(rng, n, RETAIL_HOURS), _hours(rng, n, OFFICE_HOURS))


def _later(rng, w: _World, src: np.ndarray, t: np.ndarray, quick: float, more_days: float) -> np.ndarray:
    """Local time of a transfer that ``src`` makes after local time ``t``.

    With probability ``quick`` within 5-90 minutes; otherwise at the next occurrence of an
    hour drawn from the sender's hour profile, plus a geometric number of extra days
    (``more_days`` is the chance of each further day). Either way the hour of day follows
    the sender's usual profile, whatever the reason for the transfer.
    """
    n = len(t)
    soon = t + rng.integers(300, 90 * 60, n)
    ready = t + 600
    nxt = ready // DAY * DAY + _hour_of(rng, w, src)
    nxt = np.where(nxt < ready, nxt + DAY, nxt) + (rng.geometric(1.0 - more_days, n) - 1) * DAY
    return np.where(rng.random(n) < quick, soon, nxt)


def _round_like(rng, w: _World, src: np.ndarray, amount: np.ndarray,
                floor: np.ndarray | None = None) -> np.ndarray:
    """Amounts (sender's currency) made round figures as people and businesses do.

    With probability 0.4 for persons and 0.1 for businesses the amount is rounded down to
    5, 10, 50 or 500 units (by size). A rounding that would take the amount to zero or
    below ``floor`` (a forwarding hop's 85 % bound) is not made.
    """
    unit = np.select([amount < 100, amount < 1000, amount < 10_000], [5.0, 10.0, 50.0], 500.0)
    rounded = np.floor(amount / unit) * unit
    p = np.where(w.kind[src] == PERSON, ROUND_PERSON, ROUND_BUSINESS)
    ok = (rng.random(len(amount)) < p) & (rounded > 0)
    if floor is not None:
        ok &= rounded >= floor
    return np.where(ok, rounded, amount)


def _inside(t_local: np.ndarray, country: np.ndarray, days: int) -> tuple[np.ndarray, np.ndarray]:
    """UTC seconds of local times and which of them fall inside the window (others are cut)."""
    t = t_local - UTC_OFFSET_H[country] * HOUR
    return t, (t >= 0) & (t < days * DAY)


def _transfers(rng, w: _World, src, dst, t_local, usd, floor_usd=None, channel=None) -> _Batch:
    """Normal transfers from local times and USD amounts: channel, roundness, window cut."""
    channel = _transfer_channel(rng, w, src, dst, usd) if channel is None else channel
    local = usd * w.fx[src]
    floor = None if floor_usd is None else floor_usd * w.fx[src]
    amount = _round_like(rng, w, src, local, floor)
    t, keep = _inside(t_local, w.country[src], w.days)
    return _Batch(src[keep], dst[keep], t[keep], amount[keep], np.asarray(channel)[keep])


def _local_day_start(rng, n: int, days: int, lead: int = 0) -> np.ndarray:
    """Local midnight (seconds) of uniform days in ``[-lead, days)``."""
    return rng.integers(-lead, days, n) * DAY


def _businesses(w: _World) -> np.ndarray:
    """Merchants and employers, sorted."""
    return np.sort(np.concatenate((w.merchants, w.employers)))


def _others(rng, w: _World, who: np.ndarray, pool: np.ndarray, p_foreign: float) -> np.ndarray:
    """A partner from ``pool`` for each of ``who`` (mostly the same country, never itself)."""
    pos = _pick_by_country(rng, w.country[who], w.country[pool], np.ones(len(pool)), p_foreign)
    same = pool[pos] == who
    return pool[np.where(same, (pos + 1) % len(pool), pos)]


# ------------------------------------------------------------------------- look-alikes
def _salary_forwarding(rng, w: _World, salaries: _Batch) -> _Batch:
    """Pass-through look-alike: persons who move their salary to their own account elsewhere.

    12 % of employed persons forward 85-100 % of every salary to a second account of
    theirs (another person account, another bank as a rule) within hours of the night
    payroll batch: the morning after, or within 90 minutes when they are up.
    """
    staff = np.unique(salaries.dst)
    movers = staff[rng.random(len(staff)) < 0.12]
    own = _others(rng, w, movers, w.persons, p_foreign=0.02)
    rows = np.flatnonzero(np.isin(salaries.dst, movers))
    src = salaries.dst[rows]
    dst = own[np.searchsorted(movers, src)]
    usd_salary = salaries.amount[rows] / w.fx[salaries.src[rows]]
    share = np.minimum(rng.uniform(0.85, 1.05, len(rows)), 1.0)
    t_local = salaries.t[rows] + UTC_OFFSET_H[w.country[src]] * HOUR
    t = _later(rng, w, src, t_local, quick=0.15, more_days=0.05)
    return _transfers(rng, w, src, dst, t, usd_salary * share, floor_usd=0.85 * usd_salary)


def _chains(rng, w: _World, members: np.ndarray, sizes: np.ndarray,
            usd0: np.ndarray, t0: np.ndarray, share: tuple[float, float], quick: float,
            more_days: float) -> tuple[np.ndarray, ...]:
    """Rows of round trips: member j pays member j+1 (the last pays the first back).

    Each hop passes on a ``share`` of the previous one after ``_later``. Returns row
    arrays (src, dst, local time, usd).
    """
    seg, pos = _segments(sizes)
    start = np.cumsum(sizes) - sizes
    src = members[start[seg] + pos]
    dst = members[start[seg] + (pos + 1) % sizes[seg]]
    n = len(seg)
    t = np.zeros(n, dtype=np.int64)
    usd = np.zeros(n)
    first = pos == 0
    t[first], usd[first] = t0, usd0
    for p in range(1, int(sizes.max(initial=1))):  # hop by hop: at most a few levels
        idx = np.flatnonzero(pos == p)
        t[idx] = _later(rng, w, src[idx], t[idx - 1], quick, more_days)
        usd[idx] = usd[idx - 1] * rng.uniform(*share, len(idx))
    return src, dst, t, usd


def _round_trips(rng, w: _World) -> _Batch:
    """Cycle look-alike: family loans repaid, shared costs settled, business refunds.

    Persons: cycles of 2 (60 %), 3 (30 %) or 4 (10 %) members of one country, 0.0025 per
    person per day, 150-3,000 USD typical; business pairs: 0.01 per business per day,
    large. Each hop passes on 85-102 % of the last one after hours to days.
    """
    out = []
    for pool, rate, scale, sizes_p in ((w.persons, 0.0025, 400.0, [0, 0, 0.6, 0.3, 0.1]),
                                       (_businesses(w), 0.01, 6000.0, [0, 0, 1.0, 0, 0])):
        n = rng.poisson(rate * len(pool) * w.days)
        sizes = rng.choice(len(sizes_p), size=n, p=sizes_p)
        head = pool[rng.integers(0, len(pool), n)]
        seg, pos = _segments(sizes)
        members = np.where(pos == 0, head[seg], _others(rng, w, head[seg], pool, p_foreign=0.03))
        # consecutive members must differ (the head is excluded already; others may repeat)
        dup = (pos > 0) & (members == np.r_[-1, members[:-1]])
        members = np.where(dup, _others(rng, w, members, pool, p_foreign=0.0), members)
        usd0 = rng.lognormal(np.log(scale), 0.9, n)
        t0 = _local_day_start(rng, n, w.days, lead=3) + _hour_of(rng, w, head)
        src, dst, t, usd = _chains(rng, w, members, sizes, usd0, t0, (0.85, 1.02),
                                   quick=0.15, more_days=0.7)
        out.append(_transfers(rng, w, src, dst, t, usd))
    return _Batch.concat(out)


def _bills(rng, w: _World) -> _Batch:
    """Fan-in look-alike: billers collecting direct debits around their due day.

    One biller per 400 accounts (taken from the merchants); each person pays ~0.9 bills
    a month, a stable 20-300 USD amount with +-10 % noise, 70 % on the due day in the
    night batch, the rest 1-3 days earlier at retail hours.
    """
    n_billers = max(5, len(w.kind) // 400)
    billers = rng.choice(w.merchants, size=min(n_billers, len(w.merchants)), replace=False)
    due = rng.integers(1, 29, len(billers))
    per_person = rng.poisson(0.9, len(w.persons))
    payer = np.repeat(w.persons, per_person)
    b = _pick_by_country(rng, w.country[payer], w.country[billers], _zipf_weights(rng, len(billers), 0.8), 0.01)
    usd = rng.lognormal(np.log(80.0), 0.7, len(payer))
    month_day = _month_start_days(w)
    bill, month = _segments(np.full(len(payer), len(month_day)))
    n = len(bill)
    auto = rng.random(n) < 0.7
    day = month_day[month] + due[b[bill]] - 1 - np.where(auto, 0, rng.integers(1, 4, n))
    src = payer[bill]
    hour = np.where(auto, rng.integers(1, 6, n) * HOUR + rng.integers(0, HOUR, n), _hour_of(rng, w, src))
    t = day * DAY + hour
    return _transfers(rng, w, src, billers[b[bill]], t, usd[bill] * rng.uniform(0.9, 1.1, n),
                      channel=np.full(n, ACH, dtype=np.int8))


def _collections(rng, w: _World) -> _Batch:
    """Fan-in-and-forward look-alike: a group collection paid on to a venue or a person.

    0.0004 collections per person per day; 8-30 contributors of the organiser's country
    send similar sums (20-200 USD typical) within 1-2 days; after the last one the
    organiser pays 85-100 % of the total to a merchant or a person.
    """
    n = rng.poisson(0.0004 * len(w.persons) * w.days)
    org = w.persons[rng.integers(0, len(w.persons), n)]
    k = _r(rng, 8, 30, n)
    seg, pos = _segments(k)
    giver = _others(rng, w, org[seg], w.persons, p_foreign=0.02)
    usd = rng.lognormal(np.log(50.0), 0.8, n)[seg] * rng.uniform(0.9, 1.1, len(seg))
    t0 = _local_day_start(rng, n, w.days, lead=2)
    t = t0[seg] + rng.integers(0, 2, len(seg)) * DAY + _hour_of(rng, w, giver)
    gifts = _transfers(rng, w, giver, org[seg], t, usd)
    total = np.bincount(seg, weights=usd, minlength=n)
    last = np.full(n, np.iinfo(np.int64).min)
    np.maximum.at(last, seg, t)
    venue = np.where(rng.random(n) < 0.5, w.merchants[rng.integers(0, len(w.merchants), n)],
                     _others(rng, w, org, w.persons, p_foreign=0.02))
    t_pay = _later(rng, w, org, last, quick=0.2, more_days=0.5)
    share = np.minimum(rng.uniform(0.85, 1.05, n), 1.0)
    pay = _transfers(rng, w, org, venue, t_pay, total * share, floor_usd=0.85 * total)
    return _Batch.concat([gifts, pay])


def _marketplaces(rng, w: _World) -> _Batch:
    """Fan-out look-alike: marketplaces paying their sellers in one weekly batch.

    The most popular merchants (1 per 3,000 accounts, at least 2) collect card payments
    already; 3 % of persons sell there and are paid with probability 0.6 each week,
    20-2,000 USD typical, all in the platform's batch hour on its payout weekday.
    """
    n_mp = max(2, len(w.kind) // 3000)
    mp = w.merchants[np.argsort(-w.merchant_pop, kind="stable")[:n_mp]]
    sellers = w.persons[rng.random(len(w.persons)) < 0.03]
    home = mp[_pick_by_country(rng, w.country[sellers], w.country[mp], np.ones(n_mp), 0.05)]
    weeks = -(-w.days // 7) + 1
    seller, week = _segments(np.full(len(sellers), weeks))
    paid = rng.random(len(seller)) < 0.6
    seller, week = seller[paid], week[paid]
    src = home[seller]
    mp_i = np.searchsorted(np.sort(mp), src)
    payout_dow = rng.integers(0, 5, n_mp)
    batch_hour = rng.integers(9, 18, n_mp)
    day = (week - 1) * 7 + payout_dow[mp_i]
    t = day * DAY + batch_hour[mp_i] * HOUR + rng.integers(0, 20 * 60, len(seller))
    usd = rng.lognormal(np.log(200.0), 1.0, len(seller))
    return _transfers(rng, w, src, sellers[seller], t, usd, channel=np.full(len(seller), ACH, dtype=np.int8))


def _contractors(rng, w: _World) -> _Batch:
    """Fan-out look-alike: small businesses paying contractors by transfer every two weeks."""
    biz = _businesses(w)
    payers = biz[rng.random(len(biz)) < 0.3]
    k = _r(rng, 3, 20, len(payers))
    seg, _ = _segments(k)
    who = _others(rng, w, payers[seg], w.persons, p_foreign=0.03)
    fee = rng.lognormal(np.log(1200.0), 0.6, len(seg))
    offset = rng.integers(0, 14, len(payers))
    periods = w.days // 14 + 2
    c, period = _segments(np.full(len(seg), periods))
    day = (period - 1) * 14 + offset[seg[c]]
    src = payers[seg[c]]
    t = day * DAY + _hour_of(rng, w, src)
    return _transfers(rng, w, src, who[c], t, fee[c] * rng.uniform(0.9, 1.1, len(c)))


def _treasury(rng, w: _World) -> _Batch:
    """Gather/scatter look-alike: corporate groups sweeping subsidiaries into a parent.

    One group per 25 businesses: a parent and 3-8 subsidiaries of its country. On each
    business day a subsidiary sweeps its balance (lognormal, 8,000 USD typical) to the
    parent at the end of the day with probability 0.5; the parent pays 85-100 % of the
    day's sweeps out to 2-6 subsidiaries and suppliers the next business day.
    """
    biz = _businesses(w)
    by_country = biz[np.argsort(w.country[biz], kind="stable")]
    n_groups = max(2, len(biz) // 25)
    size = _r(rng, 4, 9, n_groups)
    first = rng.integers(0, len(biz), n_groups)
    g, pos = _segments(size)
    member = by_country[(first[g] + pos) % len(biz)]
    parent = member[pos == 0]
    subs_g, subs = g[pos > 0], member[pos > 0]
    # sweeps: subsidiary x business day
    dow = (w.start_date.astype("datetime64[D]").astype(np.int64) + 3 + np.arange(w.days)) % 7
    workdays = np.flatnonzero(dow < 5)
    s_i, d_i = _segments(np.full(len(subs), len(workdays)))
    on = rng.random(len(s_i)) < 0.5
    s_i, day = s_i[on], workdays[d_i[on]]
    src = subs[s_i]
    t = day * DAY + rng.integers(17 * HOUR, 19 * HOUR, len(s_i))
    usd = rng.lognormal(np.log(8000.0), 1.0, len(s_i))
    sweeps = _transfers(rng, w, src, parent[subs_g[s_i]], t, usd)
    # payouts: group x day with sweeps, the next business day
    key = subs_g[s_i] * (w.days + 1) + day
    keys, inverse = np.unique(key, return_inverse=True)
    gathered = np.bincount(inverse, weights=usd)
    grp, gday = keys // (w.days + 1), keys % (w.days + 1)
    pays = rng.random(len(keys)) < 0.5
    grp, gday, gathered = grp[pays], gday[pays], gathered[pays]
    nxt = workdays[np.minimum(np.searchsorted(workdays, gday, "right"), len(workdays) - 1)]
    nxt = np.where(nxt <= gday, gday + 1, nxt)
    m = _r(rng, 2, 6, len(grp))
    p_seg, _ = _segments(m)
    sub_first = np.searchsorted(subs_g, grp)
    n_subs = size[grp] - 1
    to_sub = rng.random(len(p_seg)) < 0.6
    sub_pick = subs[sub_first[p_seg] + rng.integers(0, 2**31, len(p_seg)) % n_subs[p_seg]]
    payer = parent[grp[p_seg]]
    dst = np.where(to_sub, sub_pick, _others(rng, w, payer, biz, p_foreign=0.1))
    weight = rng.random(len(p_seg)) + 0.2
    weight = weight / np.bincount(p_seg, weights=weight)[p_seg]
    share = np.minimum(rng.uniform(0.85, 1.05, len(grp)), 1.0)
    t = nxt[p_seg] * DAY + _hours(rng, len(p_seg), OFFICE_HOURS)
    payouts = _transfers(rng, w, payer, dst, t, gathered[p_seg] * share[p_seg] * weight)
    return _Batch.concat([sweeps, payouts])


def _cash_businesses(rng, w: _World, threshold: float) -> _Batch:
    """Structuring look-alike: cash-intensive businesses banking their takings.

    25 % of merchants deposit cash ~4 times a week (0.6 a day); amounts are lognormal
    around 65 % of the reporting threshold (spread 0.3), in whole banknotes.
    """
    cash_m = w.merchants[rng.random(len(w.merchants)) < 0.25]
    count = rng.poisson(0.6 * w.days, len(cash_m))
    acct = np.repeat(cash_m, count)
    n = len(acct)
    local_threshold = threshold * w.fx[acct] / w.fx[w.home]
    amount = local_threshold * rng.lognormal(np.log(0.65), 0.3, n)
    t = rng.integers(0, w.days, n) * DAY + _hours(rng, n, BRANCH_HOURS)
    return _cash(rng, w, acct, t, amount)


def _cash(rng, w: _World, acct: np.ndarray, t_local: np.ndarray, amount: np.ndarray) -> _Batch:
    """Cash deposits (own account both ends), whole banknotes: multiples of 10 (80 %) or 1."""
    unit = np.where(rng.random(len(amount)) < 0.8, 10.0, 1.0)
    amount = np.maximum(np.floor(amount / unit) * unit, 1.0)
    t, keep = _inside(t_local, w.country[acct], w.days)
    return _Batch(acct[keep], acct[keep], t[keep], amount[keep], np.full(int(keep.sum()), CASH, dtype=np.int8))


def _trade_and_remittances(rng, w: _World) -> _Batch:
    """Cross-border look-alikes: trade wires between businesses and monthly remittances.

    Businesses pay suppliers 0.06 times a day (70 % abroad, 15,000 USD typical); 6 % of
    persons send 100-1,000 USD home to a relative abroad every month.
    """
    biz = _businesses(w)
    count = rng.poisson(0.06 * w.days, len(biz))
    src = np.repeat(biz, count)
    dst = _others(rng, w, src, biz, p_foreign=0.7)
    t = rng.integers(0, w.days, len(src)) * DAY + _hours(rng, len(src), OFFICE_HOURS)
    trade = _transfers(rng, w, src, dst, t, rng.lognormal(np.log(15000.0), 1.1, len(src)))

    senders = w.persons[rng.random(len(w.persons)) < 0.06]
    abroad = _others(rng, w, senders, w.persons, p_foreign=1.0)
    dom = rng.integers(1, 29, len(senders))
    usd = rng.lognormal(np.log(300.0), 0.6, len(senders))
    month_day = _month_start_days(w)
    s, month = _segments(np.full(len(senders), len(month_day)))
    day = month_day[month] + dom[s] - 1 + rng.integers(-2, 3, len(s))
    t = day * DAY + _hour_of(rng, w, senders[s])
    home = _transfers(rng, w, senders[s], abroad[s], t, usd[s] * rng.uniform(0.9, 1.1, len(s)))
    return _Batch.concat([trade, home])


def _large_payments(rng, w: _World) -> _Batch:
    """Large one-off payments (cars, deposits, tuition), half funded by family just before.

    2.5 % of persons in the window pay 5,000-60,000 USD once to a merchant (60 %) or a
    person; half of them receive 100-115 % of it from a relative 0-3 days earlier, so the
    payer forwards most of a recent inflow, legitimately.
    """
    payer = w.persons[rng.random(len(w.persons)) < 0.025 * w.days / 90]
    n = len(payer)
    usd = np.clip(rng.lognormal(np.log(15000.0), 0.6, n), 5000.0, 60000.0)
    seller = np.where(rng.random(n) < 0.6, _others(rng, w, payer, w.merchants, p_foreign=0.02),
                      _others(rng, w, payer, w.persons, p_foreign=0.02))
    funded = rng.random(n) < 0.5
    t_in = _local_day_start(rng, n, w.days, lead=3) + _hour_of(rng, w, payer)
    family = _others(rng, w, payer, w.persons, p_foreign=0.05)
    gift = _transfers(rng, w, family[funded], payer[funded], t_in[funded],
                      usd[funded] * rng.uniform(1.0, 1.15, int(funded.sum())))
    t_pay = np.where(funded, _later(rng, w, payer, t_in, quick=0.1, more_days=0.6), t_in)
    pay = _transfers(rng, w, payer, seller, t_pay, usd)
    return _Batch.concat([gift, pay])


def _friends(rng, w: _World, p2p: _Batch) -> _Batch:
    """The simple world's person-to-person transfers with larger sums among them.

    A fifth of them are 700 USD typical (lognormal, spread 0.9: paying back a holiday,
    sharing rent, a used car) instead of the simple world's 90 USD, so that mid-size
    transfers between persons are common; channel and roundness follow the shared rules.
    """
    usd = p2p.amount / w.fx[p2p.src]
    usd = np.where(rng.random(len(usd)) < 0.2, rng.lognormal(np.log(700.0), 0.9, len(usd)), usd)
    channel = _transfer_channel(rng, w, p2p.src, p2p.dst, usd)
    amount = _round_like(rng, w, p2p.src, usd * w.fx[p2p.src])
    return _Batch(p2p.src, p2p.dst, p2p.t, amount, channel)


def _normal(rng, w: _World, threshold: float) -> _Batch:
    """All legitimate activity: the simple world's behaviour plus the look-alikes.

    Launderers lead ordinary lives here: the simple world's thin mule accounts (fewer
    card payments, rarely employed) are not reproduced.
    """
    ordinary = replace(w, mules=np.empty(0, dtype=np.int64))
    card, card_m, card_usd, card_day = _card_payments(rng, ordinary)
    salaries = _salaries(rng, ordinary)
    standing = _standing_orders(rng, ordinary)
    standing.amount = _round_like(rng, w, standing.src, standing.amount)
    p2p = _friends(rng, w, _p2p(rng, ordinary))
    cash = _cash_deposits(rng, ordinary)
    cash = _cash(rng, w, cash.src, cash.t + UTC_OFFSET_H[w.country[cash.src]] * HOUR, cash.amount)
    return _Batch.concat([
        salaries, card, standing, p2p, cash,
        _merchant_payouts(rng, ordinary, card_m, card_usd, card_day),
        _salary_forwarding(rng, w, salaries), _round_trips(rng, w), _bills(rng, w),
        _collections(rng, w), _marketplaces(rng, w), _contractors(rng, w), _treasury(rng, w),
        _cash_businesses(rng, w, threshold), _trade_and_remittances(rng, w), _large_payments(rng, w),
    ])


# ------------------------------------------------------------------------- laundering
def _shape(rng, typology: str, n: int) -> dict[str, np.ndarray]:
    """Sizes of ``n`` instances: transactions (``n_tx``) and actor/mule members needed."""
    one = np.ones(n, dtype=np.int64)
    if typology == "fan_in":
        k, f = _r(rng, 5, 20, n), _r(rng, 1, 2, n)
        return dict(k=k, f=f, n_tx=k + f, actors=1 + f, mules=k, span=_r(rng, 1, 3, n))
    if typology == "fan_out":
        k = _r(rng, 5, 15, n)
        return dict(k=k, n_tx=1 + k, actors=2 * one, mules=k)
    if typology == "cycle":
        k = _r(rng, 3, 8, n)
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
        k, h = _r(rng, 6, 16, n), _r(rng, 1, 3, n)
        return dict(k=k, h=h, n_tx=k + h, actors=one, mules=h, span=_r(rng, 2, 7, n))
    if typology == "pass_through":
        rounds = _r(rng, 2, 6, n)
        return dict(rounds=rounds, n_tx=2 * rounds, actors=2 * one, mules=one)
    raise AssertionError(typology)


def _mean_size(typology: str) -> float:
    """Expected transactions per instance, from the shape distributions themselves."""
    return float(_shape(np.random.default_rng(0), typology, 4096)["n_tx"].mean())


def _weights(rng, seg: np.ndarray, n_seg: int) -> np.ndarray:
    """Random shares per row that sum to 1 within each segment (uneven splits)."""
    x = rng.uniform(0.5, 1.5, len(seg))
    return x / np.bincount(seg, weights=x, minlength=n_seg)[seg]


def _pooled(key_in, t_in, usd_in, key_out):
    """Per outgoing row: total and latest time of the inflows with the same (instance, node) key."""
    keys, inverse = np.unique(key_in, return_inverse=True)
    total = np.bincount(inverse, weights=usd_in)
    last = np.full(len(keys), np.iinfo(np.int64).min)
    np.maximum.at(last, inverse, t_in)
    i = np.searchsorted(keys, key_out)
    return total[i], last[i]


def _build(rng, w: _World, typology: str, sh, A: _Block, M: _Block, threshold: float):
    """Rows of all instances of one typology.

    Returns (instance, src, dst, local offset s, USD amount as paid, channel or -1 for the
    transfer rule). Offsets count from local midnight of the instance's first day.
    """
    inst, pos = _segments(sh["n_tx"])
    n_inst = len(sh["n_tx"])
    n = len(inst)
    zero = np.zeros(n, dtype=np.int64)
    t = np.zeros(n, dtype=np.int64)
    usd = np.zeros(n)
    channel = np.full(n, -1, dtype=np.int8)
    base = rng.lognormal(np.log(3000.0), 0.9, n_inst)

    def settle(idx, basis=None):
        """Rows ``idx`` paid as people pay: round figures (a forward keeps >= 85 % of
        ``basis``), cash in whole banknotes. Later hops pass on what was really paid."""
        fx = w.fx[src[idx]]
        local = usd[idx] * fx
        cash = channel[idx] == CASH
        notes = np.where(rng.random(len(idx)) < 0.8, 10.0, 1.0)
        floor = None if basis is None else KEEP[0] * basis * fx
        paid = np.where(cash, np.floor(local / notes) * notes, _round_like(rng, w, src[idx], local, floor))
        usd[idx] = paid / fx

    def forward(idx, basis, after, quick=0.3, more_days=0.3):
        """Rows ``idx`` pass on 85-99 % of ``basis`` after local time ``after``."""
        usd[idx] = basis * rng.uniform(*KEEP, len(idx))
        t[idx] = _later(rng, w, src[idx], after, quick, more_days)
        settle(idx, basis)

    def start(idx):
        """Independent first hops: a day of the instance's span, the sender's usual hour."""
        span = sh["span"][inst[idx]] if "span" in sh else np.ones(len(idx), dtype=np.int64)
        return np.floor(rng.random(len(idx)) * span).astype(np.int64) * DAY + _hour_of(rng, w, src[idx])

    if typology == "fan_in":  # funnel: many senders, the collector forwards the total
        k = sh["k"][inst]
        into = pos < k
        src = np.where(into, M(inst, pos), A(inst, zero))
        dst = np.where(into, A(inst, zero), A(inst, 1 + pos - k))
        i = np.flatnonzero(into)
        usd[i] = (base / 4)[inst[i]] * rng.uniform(0.7, 1.3, len(i))
        t[i] = start(i)
        settle(i)
        o = np.flatnonzero(~into)
        total, last = _pooled(inst[i], t[i], usd[i], inst[o])
        forward(o, total * _weights(rng, inst[o], n_inst), last)
    elif typology == "fan_out":  # one inflow split among many recipients
        out = pos > 0
        src = np.where(out, A(inst, zero + 1), A(inst, zero))
        dst = np.where(out, M(inst, pos - 1), A(inst, zero + 1))
        i, o = np.flatnonzero(~out), np.flatnonzero(out)
        usd[i] = base * 2
        t[i] = start(i)
        settle(i)
        forward(o, usd[o - pos[o]] * _weights(rng, inst[o], n_inst), t[o - pos[o]], more_days=0.5)
    elif typology in ("cycle", "random"):  # money passed on hop by hop
        if typology == "cycle":
            k = sh["k"][inst]
            at, nxt = pos, (pos + 1) % k
        else:
            s = sh["s"][inst]
            step = np.floor(rng.random(n) * (s - 1)).astype(np.int64) + 1
            nxt = _segment_cumsum(step, inst) % s
            at = np.where(pos == 0, 0, np.r_[0, nxt[:-1]])
        node = lambda j: np.where(j == 0, A(inst, zero), M(inst, np.maximum(j - 1, 0)))  # noqa: E731
        src, dst = node(at), node(nxt)
        first = np.flatnonzero(pos == 0)
        usd[first] = base
        t[first] = start(first)
        settle(first)
        for p in range(1, int(sh["n_tx"].max(initial=1))):  # hop by hop
            idx = np.flatnonzero(pos == p)
            forward(idx, usd[idx - 1], t[idx - 1])
    elif typology == "scatter_gather":  # split over intermediaries who pass it to one sink
        k = sh["k"][inst]
        back = pos >= k
        j = pos - k * back
        src = np.where(back, M(inst, j), A(inst, zero))
        dst = np.where(back, A(inst, zero + 1), M(inst, j))
        out = np.flatnonzero(~back)
        usd[out] = base[inst[out]] * _weights(rng, inst[out], n_inst)
        t0 = _hour_of(rng, w, A(np.arange(n_inst), 0))
        t[out] = _later(rng, w, src[out], t0[inst[out]], quick=0.5, more_days=0.2)
        settle(out)
        b = np.flatnonzero(back)
        forward(b, usd[b - k[b]], t[b - k[b]])
    elif typology == "gather_scatter":  # many into a hub that splits it again
        k = sh["k"][inst]
        out = pos >= k
        src = np.where(out, M(inst, zero), A(inst, pos))
        dst = np.where(out, A(inst, pos), M(inst, zero))
        i, o = np.flatnonzero(~out), np.flatnonzero(out)
        usd[i] = (base / 2)[inst[i]] * rng.uniform(0.7, 1.3, len(i))
        t[i] = np.floor(rng.random(len(i)) * 2).astype(np.int64) * DAY + _hour_of(rng, w, src[i])
        settle(i)
        total, last = _pooled(inst[i], t[i], usd[i], inst[o])
        forward(o, total * _weights(rng, inst[o], n_inst), last)
    elif typology == "bipartite":  # a set of senders paying a set of receivers
        b = sh["b"][inst]
        src, dst = A(inst, pos // b), M(inst, pos % b)
        usd[:] = (base / 3)[inst] * rng.uniform(0.8, 1.2, n)
        t[:] = start(np.arange(n))
        settle(np.arange(n))
    elif typology == "stack":  # layer 0 -> layer 1 -> layer 2, each layer passing it on
        w0, w1, w2 = sh["w0"][inst], sh["w1"][inst], sh["w2"][inst]
        second = pos >= w0 * w1
        q = pos - second * w0 * w1
        src = np.where(second, M(inst, q // w2), A(inst, q // w1))
        dst = np.where(second, A(inst, w0 + q % w2), M(inst, q % w1))
        i, o = np.flatnonzero(~second), np.flatnonzero(second)
        usd[i] = (base / 3)[inst[i]] * rng.uniform(0.8, 1.2, len(i))
        t[i] = start(i)
        settle(i)
        big = np.int64(1) << 32
        total, last = _pooled(inst[i] * big + dst[i], t[i], usd[i], inst[o] * big + src[o])
        forward(o, total / w2[o] * rng.uniform(0.85, 1.15, len(o)), last)
    elif typology == "structuring":  # smurfs deposit cash below the threshold, then consolidate
        k, h = sh["k"][inst], sh["h"][inst]
        dep = pos < k
        depositor = np.where(dep, pos % (h + 1), pos - k + 1)  # 0 = the actor, 1.. = smurfs
        who = np.where(depositor == 0, A(inst, zero), M(inst, np.maximum(depositor - 1, 0)))
        src = who
        dst = np.where(dep, who, A(inst, zero))
        d = np.flatnonzero(dep)
        local = threshold * rng.uniform(0.85, 0.99, len(d))
        usd[d] = local / w.fx[w.home]
        channel[d] = CASH
        span = sh["span"][inst[d]]
        t[d] = np.floor(rng.random(len(d)) * span).astype(np.int64) * DAY + _hours(rng, len(d), BRANCH_HOURS)
        settle(d)
        c = np.flatnonzero(~dep)
        big = np.int64(1) << 32
        total, last = _pooled(inst[d] * big + who[d], t[d], usd[d], inst[c] * big + src[c])
        forward(c, total, last, quick=0.1, more_days=0.5)
    elif typology == "pass_through":  # a mule forwards most of each inflow within hours
        out = pos % 2 == 1
        src = np.where(out, M(inst, zero), A(inst, zero))
        dst = np.where(out, A(inst, zero + 1), M(inst, zero))
        for p in range(int(sh["n_tx"].max(initial=1))):  # round by round
            idx = np.flatnonzero(pos == p)
            if p == 0:
                usd[idx] = base[inst[idx]] * rng.uniform(0.7, 1.3, len(idx))
                t[idx] = start(idx)
                settle(idx)
            elif p % 2 == 1:
                forward(idx, usd[idx - 1], t[idx - 1], quick=0.6, more_days=0.0)
            else:
                usd[idx] = base[inst[idx]] * rng.uniform(0.7, 1.3, len(idx))
                t[idx] = _later(rng, w, src[idx], t[idx - 1], quick=0.0, more_days=0.5)
                settle(idx)
    else:  # pragma: no cover - TYPOLOGIES and this chain are kept in step by the tests
        raise AssertionError(typology)
    return inst, src, dst, t, usd, channel


def _launderers(rng, w: _World) -> tuple[_Pool, _Pool]:
    """Who launders: actors (persons and front companies) and mules (persons), disjoint.

    Chosen afresh rather than the simple world's few thin mule accounts, so that a mule
    takes part in a handful of instances, not dozens, and leads an ordinary life.
    """
    shuffled = rng.permutation(w.persons)
    n_actors = max(50, round(ACTOR_SHARE * len(w.persons)))
    n_mules = max(60, round(MULE_SHARE * len(w.persons)))
    biz = _businesses(w)
    fronts = biz[rng.random(len(biz)) < FRONT_SHARE]
    actors = np.concatenate((shuffled[:n_actors], fronts))
    mules = shuffled[n_actors:n_actors + n_mules]
    return _Pool(rng, actors, w.country), _Pool(rng, mules, w.country)


def _laundering(rng, w: _World, n_normal: int, rate: float, mix: dict[str, float], threshold: float) -> _Batch:
    """Labelled instances whose hops inside the window make up ~``rate`` of all rows.

    Each typology gets its share of the target rows (``typology_mix`` weighs instances,
    as in the simple world, times the typology's mean size). More instances than needed
    are simulated, with start days uniform over ``[-LEAD_DAYS, days)``, and taken in order
    until their rows inside the window reach the share (at least one instance with a row
    inside).
    """
    weights = {t: mix.get(t, 0.0) for t in TYPOLOGIES if mix.get(t, 0.0) > 0}
    total_w = sum(weights.values())
    per_instance = sum(wt / total_w * _mean_size(t) for t, wt in weights.items())
    target_rows = rate * n_normal / (1.0 - rate)
    counts = _allocate(target_rows / per_instance, weights)
    actors, mules = _launderers(rng, w)
    batches = []
    for code, typology in enumerate(TYPOLOGIES):  # ten iterations
        if typology not in weights:
            continue
        want = target_rows * weights[typology] / total_w * _mean_size(typology) / per_instance
        n = int(np.ceil(counts[typology] * 1.5 * (w.days + LEAD_DAYS) / w.days)) + 3
        sh = _shape(rng, typology, n)
        if typology == "structuring":  # the threshold is the home jurisdiction's
            country = np.full(n, w.home)
        else:
            country = w.country[actors.glob[rng.integers(0, len(actors.glob), n)]]
        short = (actors.seg_count[country] < sh["actors"]) | (mules.seg_count[country] < sh["mules"])
        country = np.where(short, w.home, country)
        p_local = 1.0 if typology == "structuring" else 0.9
        A = actors.block(rng, country, sh["actors"], p_local=p_local)
        M = mules.block(rng, country, sh["mules"], p_local=p_local)
        inst, src, dst, offset, usd, channel = _build(rng, w, typology, sh, A, M, threshold)
        start = _local_day_start(rng, n, w.days, lead=LEAD_DAYS)
        t = start[inst] + offset - UTC_OFFSET_H[country[inst]] * HOUR
        inside = (t >= 0) & (t < w.days * DAY)
        rows = np.bincount(inst, weights=inside, minlength=n)
        upto = np.cumsum(rows)
        n_take = max(int(np.searchsorted(upto, want, "left")) + 1, int(np.argmax(rows > 0)) + 1)
        keep = inside & (inst < n_take)
        transfer = channel < 0
        channel = np.where(transfer, _transfer_channel(rng, w, src, dst, usd), channel).astype(np.int8)
        amount = usd * w.fx[src]
        batches.append(_Batch(src[keep], dst[keep], t[keep], amount[keep], channel[keep],
                              np.full(int(keep.sum()), code, dtype=np.int8), inst[keep]))
    return _Batch.concat(batches)


def simulate(rng, w: _World, rate: float, mix: dict[str, float], threshold: float) -> _Batch:
    """Normal traffic with look-alikes and the labelled laundering of the realistic world."""
    normal = _normal(rng, w, threshold)
    return _Batch.concat([normal, _laundering(rng, w, len(normal), rate, mix, threshold)])


SIMULATE["realistic"] = simulate
