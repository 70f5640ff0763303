"""Hostile inputs seen or feared, shared by the deterministic tests and the fuzzers' seeds.

Each entry once failed a micro-batch (so Spark replayed it forever), failed a whole file,
or passed as valid with wrong values.
"""

from __future__ import annotations

import json

#: A valid stream record; the hostile ones are made from it.
GOOD = {"event_id": "e-1", "event_time": "2025-01-20T10:00:00+00:00", "src_account": "A1", "dst_account": "B1",
        "amount": 120.5, "currency": "USD", "channel": "wire", "jurisdiction": "US"}


def record(**changes) -> str:
    return json.dumps({**GOOD, **changes})


#: Stream record text (or bytes) -> the reason its dead letter must carry.
STREAM_CASES: dict[str, tuple[str | bytes, str]] = {
    "time that overflows in UTC": (record(event_time="9999-12-31T23:59:59-01:00"), "invalid_event_time"),
    "time that underflows in UTC": (record(event_time="0001-01-01T00:00:00+01:00"), "invalid_event_time"),
    "label out of Int8": (record(label=300), "invalid_label"),
    "label not 0/1": (record(label=2), "invalid_label"),
    "JSON nested 1,000 levels": ('{"a":' * 1000 + "1" + "}" * 1000, "json_too_deep"),
    "array nested 1,000 levels": ("[" * 1000 + "]" * 1000, "json_too_deep"),
    "record of 1 MB": (record(merchant="m" * 1_000_000), "record_too_large"),
    "invalid UTF-8": (b'{"event_id": "e-\xe9"}', "invalid_utf8"),
    "lone surrogate escape": (record(event_id="e-\\ud800").replace("\\\\ud800", "\\ud800"), "unparseable_record"),
    "control separator in an id": (record(event_id="e\u001f1"), "control_character"),
    "line separator in an account": (record(src_account="A\u20281"), "control_character"),
    "id over 256 characters": (record(event_id="e" * 300), "id_too_long"),
    "event dated 2100": (record(event_time="2100-01-01T00:00:00Z"), "event_time_in_future"),
    "amount beyond a float": (record(amount=int("9" * 400)), "invalid_amount"),
    "integer over 4,300 digits": ('{"amount": ' + "9" * 5000 + "}", "unparseable_record"),
    "not an object": ("[1, 2, 3]", "unparseable_record"),
    "BOM then JSON": ("\ufeff" + record(), "unparseable_record"),
}

#: PaySim header and one good row (the first row of tests/data/paysim_head3000.csv).
PAYSIM_HEADER = ("step,type,amount,nameOrig,oldbalanceOrg,newbalanceOrig,nameDest,oldbalanceDest,newbalanceDest,"
                 "isFraud,isFlaggedFraud")
PAYSIM_ROW = "1,PAYMENT,9839.64,C1231006815,170136.0,160296.36,M1979787155,0.0,0.0,0,0"

#: One bad PaySim line (bytes) -> the reason its quarantined row must carry.
CSV_CASES: dict[str, tuple[bytes, str]] = {
    "unquoted thousands separator": (b"1,PAYMENT,1,234.50,C1,170136.0,160296.36,M1,0.0,0.0,0,0", "too_many_fields"),
    "cut short": (b"1,PAYMENT,9839.64,C1", "too_few_fields"),
    "blank line": (b"", "too_few_fields"),
    "other delimiter": (PAYSIM_ROW.replace(",", ";").encode(), "too_few_fields"),
    "Latin-1 byte": ("1,PAYMENT,9839.64,C\xe9,170136.0,160296.36,M1,0.0,0.0,0,0".encode("latin-1"), "invalid_utf8"),
    "stray opening quote": (b'1,PAYMENT,"9839.64,C1,170136.0,160296.36,M1,0.0,0.0,0,0', "malformed_quoting"),
    "text after a closing quote": (b'1,PAYMENT,"9839"x,C1,170136.0,160296.36,M1,0.0,0.0,0,0', "malformed_quoting"),
    "event dated 2100": (b"9000000,PAYMENT,9839.64,C1,170136.0,160296.36,M1,0.0,0.0,0,0", "event_time_in_future"),
    "id over 256 characters": (f"1,PAYMENT,9839.64,C{'1' * 300},1.0,1.0,M1,0.0,0.0,0,0".encode(), "id_too_long"),
    "control character in an account": (b"1,PAYMENT,9839.64,C1\x1f2,1.0,1.0,M1,0.0,0.0,0,0", "control_character"),
}
