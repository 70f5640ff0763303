"""Hypothesis strategies for hostile input: CSV lines, stream records, API bodies, each mixing
valid values, the seeded corpus (:mod:`.corpus`) and arbitrary text and bytes."""

from __future__ import annotations

import json

from hypothesis import strategies as st

from tests.reliability.corpus import CSV_CASES, GOOD, PAYSIM_ROW, STREAM_CASES

#: Text of any Unicode scalar (surrogates excluded: files and bytes cannot hold them).
ANY_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=24)
FIELD_TEXT = st.one_of(ANY_TEXT, st.sampled_from(["", " ", '"', '""', '"a,b"', "1,234.50", "\r", "\u2028", "\x85", "\ufeff",
                                                  "é", "\x00", "9" * 400, "e" * 300, "1e309", "NaN", "-0"]))


def csv_line(separator: str = ","):
    """One physical line of a CSV file (bytes, no newline): a good row, a seeded bad one,
    random fields joined by the separator or another one, raw bytes, a huge field."""
    good = st.just(PAYSIM_ROW.replace(",", separator).encode())
    seeded = st.sampled_from([v for v, _ in CSV_CASES.values()])
    fields = st.lists(FIELD_TEXT, max_size=14).flatmap(
        lambda fs: st.sampled_from([separator, ",", ";", "\t", "|"]).map(lambda s: s.join(fs).encode("utf-8")))
    raw = st.binary(max_size=64)
    huge = st.just(PAYSIM_ROW.replace("9839.64", "9" * 200_000).encode())
    edited = st.tuples(st.integers(0, 10), FIELD_TEXT).map(
        lambda t: separator.join(f if i != t[0] else t[1] for i, f in enumerate(PAYSIM_ROW.split(","))).encode("utf-8"))
    line = st.one_of(good, good, seeded, fields, raw, edited, huge)
    return line.map(lambda b: b.replace(b"\n", b" "))


JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), ANY_TEXT)
JSON_ANY = st.recursive(JSON_LEAF, lambda c: st.lists(c, max_size=3) | st.dictionaries(ANY_TEXT, c, max_size=3), max_leaves=8)
#: Plausible and implausible values of each canonical field.
FIELD_VALUES = {
    "event_id": st.one_of(st.text(min_size=1, max_size=12), st.sampled_from(["", " ", "e" * 300, "a\x1fb", "a\u2028b"])),
    "event_time": st.one_of(st.datetimes(timezones=st.timezones()).map(lambda t: t.isoformat()),
                            st.sampled_from(["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "2100-01-01T00:00:00Z",
                                             "2025-01-20T10:00:00", "2025-13-01T00:00:00Z", "now"])),
    "amount": st.one_of(st.floats(), st.integers(), st.sampled_from([int("9" * 400), "12.5", "1,234.50"])),
    "label": st.one_of(st.integers(-300, 300), st.sampled_from([0, 1, True, "1", "yes", 0.5])),
}


def stream_object():
    """A JSON object near the canonical schema: each field kept, dropped, or replaced."""
    def field(name):
        good = st.just(GOOD[name]) if name in GOOD else st.nothing()
        return st.one_of(good, good, FIELD_VALUES.get(name, JSON_ANY), JSON_ANY)

    names = [*GOOD, "label", "merchant"]
    return st.fixed_dictionaries({}, optional={n: field(n) for n in names})


def stream_text():
    """Record text or bytes as a stream source hands it over."""
    seeded = st.sampled_from([v for v, _ in STREAM_CASES.values()])
    as_json = stream_object().map(lambda o: json.dumps(o, ensure_ascii=False))
    return st.one_of(as_json, as_json, as_json, seeded, ANY_TEXT, st.binary(max_size=64),
                     JSON_ANY.map(json.dumps))
