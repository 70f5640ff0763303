"""Every record is scored or dead-lettered (or quarantined), never the cause of a failed batch
or file: each hostile input of :mod:`.corpus` costs its own record, with its reason and its
original text or bytes; the rest is read as before."""

from __future__ import annotations

import base64
import hashlib
import json

import pyarrow as pa
import pytest

from aml_pipeline.sources.paysim import PaySimSource
from aml_pipeline.sources.tabular import TabularSource
from aml_pipeline.streaming.job import file_records
from aml_pipeline.streaming.records import DEAD_RECORD_BYTES, RawRecord, check
from aml_pipeline.validation import build_rules, validate
from tests.reliability.corpus import CSV_CASES, GOOD, PAYSIM_HEADER, PAYSIM_ROW, STREAM_CASES, record

STREAM_RULES = build_rules(["USD"], require_label=False)
BATCH_RULES = build_rules(["USD"], require_label=True)


def _raw(value: str | bytes, n: int) -> RawRecord:
    pos = {"topic": "t", "partition": 0, "offset": n}
    if isinstance(value, bytes):
        try:
            return RawRecord(value.decode("utf-8"), pos)
        except UnicodeDecodeError:
            return RawRecord(None, pos, raw=value)
    return RawRecord(value, pos)


# ----------------------------------------------------------------------------- stream records
@pytest.mark.parametrize("name", list(STREAM_CASES))
def test_each_hostile_stream_record_is_one_dead_letter_with_its_reason(name):
    value, reason = STREAM_CASES[name]
    records = [RawRecord(record(event_id="before"), {"line": 1}), _raw(value, 2), RawRecord(record(event_id="after"), {"line": 3})]
    checked = check(records, STREAM_RULES)
    assert checked.valid["event_id"].to_list() == ["before", "after"]  # the batch goes on
    assert len(checked.dead) == 1 and reason in checked.dead[0]["reasons"], checked.dead
    assert checked.dead[0]["offset"] == 2


def test_dead_letters_keep_the_original_and_stay_under_the_limit():
    big = record(merchant="m" * 1_000_000)
    latin = b'{"event_id": "caf\xe9"}' + b"x" * 40_000
    checked = check([_raw(big, 1), _raw(latin, 2), _raw(b'{"event_id": "\xe9"}', 3)], STREAM_RULES)
    whole, hashed, small = checked.dead
    assert whole["record_truncated"] and whole["record_bytes"] == len(big.encode())
    assert whole["record_sha256"] == hashlib.sha256(big.encode()).hexdigest()
    assert big.startswith(whole["record"]) and len(json.dumps(whole)) < 2 * DEAD_RECORD_BYTES
    assert base64.b64decode(hashed["record_base64"]) == latin[:DEAD_RECORD_BYTES]
    assert hashed["record_sha256"] == hashlib.sha256(latin).hexdigest()
    assert base64.b64decode(small["record_base64"]) == b'{"event_id": "\xe9"}' and "record_truncated" not in small


def test_future_events_are_dead_letters_and_the_clock_is_the_wall_clock():
    soon = record(event_id="soon", event_time="2030-01-01T00:00:00Z")
    checked = check([RawRecord(soon, {"line": 1})], STREAM_RULES, now_us=1_893_452_400_000_000)  # 2029-12-31T23:00Z
    assert checked.valid.height == 1  # exactly the skew past that clock: accepted
    checked = check([RawRecord(soon, {"line": 1})], STREAM_RULES, now_us=1_893_452_400_000_000 - 1)
    assert checked.dead[0]["reasons"] == ["event_time_in_future"]  # one microsecond more: refused
    far = check([RawRecord(record(event_time="2100-01-01T00:00:00Z"), {"line": 1})], STREAM_RULES)
    assert far.dead[0]["reasons"] == ["event_time_in_future"]


def test_file_stream_lines_end_at_newline_only(tmp_path):
    """U+2028, U+2029 and \\x85 are legal inside a JSON string: one line, one record."""
    lines = [record(event_id=f"sep-{i}", merchant=f"shop{c}name") for i, c in enumerate("\u2028\u2029\x85")]
    for line in lines:
        assert json.loads(line)  # json.dumps escapes them by default; write them raw instead
    raw_lines = [line.replace("\\u2028", "\u2028").replace("\\u2029", "\u2029").replace("\\u0085", "\x85") for line in lines]
    text = "\ufeff" + "\r\n".join(raw_lines) + "\n"
    table = pa.table({"path": ["file:///x/part-0.jsonl"], "value": [text]})
    records = file_records(table)
    assert [r.position["line"] for r in records] == [1, 2, 3]
    checked = check(records, STREAM_RULES)
    assert checked.valid["event_id"].to_list() == ["sep-0", "sep-1", "sep-2"] and not checked.dead


def test_file_stream_keeps_the_bytes_of_a_line_that_is_not_utf8(tmp_path):
    path = tmp_path / "part-0.jsonl"
    path.write_bytes(record(event_id="ok-1").encode() + b'\n{"event_id": "caf\xe9"}\n' + record(event_id="ok-2").encode() + b"\n")
    text = path.read_bytes().decode("utf-8", errors="replace")  # what Spark hands over
    records = file_records(pa.table({"path": [path.as_uri()], "value": [text]}))
    checked = check(records, STREAM_RULES)
    assert checked.valid["event_id"].to_list() == ["ok-1", "ok-2"]
    (dead,) = checked.dead
    assert dead["reasons"] == ["invalid_utf8"] and dead["line"] == 2
    assert base64.b64decode(dead["record_base64"]) == b'{"event_id": "caf\xe9"}'


# ----------------------------------------------------------------------------- batch files
def _paysim(tmp_path, bad: bytes, head: bytes = b"", name: str = "p.csv"):
    path = tmp_path / name
    path.write_bytes(head + "\n".join([PAYSIM_HEADER, PAYSIM_ROW]).encode() + b"\n" + bad + b"\n" + PAYSIM_ROW.replace(
        "C1231006815", "C2").encode() + b"\n")
    return validate(PaySimSource(str(path)).read(), BATCH_RULES)


@pytest.mark.parametrize("name", list(CSV_CASES))
def test_each_hostile_csv_line_quarantines_that_row_only(tmp_path, name):
    bad, reason = CSV_CASES[name]
    result = _paysim(tmp_path, bad)
    assert result.reconciles() and result.rows_read == 3 and result.rows_valid == 2, result.quarantine.to_dicts()
    (q,) = result.quarantine.to_dicts()
    assert q["reasons"] == [reason] and q["source_line"] == 3
    if reason in ("too_many_fields", "too_few_fields", "invalid_utf8", "malformed_quoting"):
        assert json.loads(q["record"]) == bad.decode("utf-8", errors="backslashreplace")  # the line's text
    else:
        assert json.loads(q["record"])["nameOrig"] == bad.decode().split(",")[3]


def test_thousands_separator_no_longer_passes_as_a_wrong_valid_row(tmp_path):
    """``truncate_ragged_lines`` made this amount 1.0 and the sender '234.50'."""
    result = _paysim(tmp_path, CSV_CASES["unquoted thousands separator"][0])
    assert 1.0 not in result.valid["amount"].to_list() and "234.50" not in result.valid["src_account"].to_list()


@pytest.mark.parametrize("bom, encoding", [(b"\xef\xbb\xbf", "utf-8"), (b"", "utf-16"), (b"", "utf-16-be")])
def test_bom_and_utf16_files_read_like_utf8(tmp_path, bom, encoding):
    text = "\n".join([PAYSIM_HEADER, PAYSIM_ROW, PAYSIM_ROW.replace("C1231006815", "Cé")]) + "\n"
    data = bom + (text.encode(encoding) if encoding != "utf-16-be" else b"\xfe\xff" + text.encode(encoding))
    path = tmp_path / "bom.csv"
    path.write_bytes(data)
    result = validate(PaySimSource(str(path)).read(), BATCH_RULES)
    assert result.rows_valid == 2 and result.valid["src_account"].to_list() == ["C1231006815", "Cé"]


def test_quoted_fields_spanning_lines_still_read(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('id,t,a,b,x,memo\n1,2025-01-01T00:00:00Z,p,q,5,"two\nlines, one field"\n2,2025-01-01T00:00:00Z,p,q,6,"ok"\n'
                    '3,2025-01-01T00:00:00Z,p,q,7,"never closed\n4,2025-01-01T00:00:00Z,p,q,8,plain\n')
    src = TabularSource(str(path), columns={"event_id": "id", "event_time": "t", "src_account": "a", "dst_account": "b",
                                            "amount": "x", "merchant": "memo"}, constants={"currency": "USD"})
    result = validate(src.read(), build_rules(["USD"], src.has_labels))
    assert result.valid["event_id"].to_list() == ["1", "2", "4"]
    assert result.valid["merchant"].to_list()[0] == "two\nlines, one field"
    (q,) = result.quarantine.to_dicts()
    assert q["reasons"] == ["malformed_quoting"] and q["source_line"] == 5
    assert json.loads(q["record"]) == '3,2025-01-01T00:00:00Z,p,q,7,"never closed'


def test_batch_future_bound_is_the_wall_clock_when_read(tmp_path):
    """The file's own newest time is no clock: the 2100 row would vouch for itself."""
    path = tmp_path / "future.csv"
    path.write_text("id,t,a,b,x\n1,2025-01-01T00:00:00Z,p,q,5\n2,2100-01-01T00:00:00Z,p,q,5\n3,2025-01-02T00:00:00Z,p,q,5\n")
    src = TabularSource(str(path), columns={"event_id": "id", "event_time": "t", "src_account": "a", "dst_account": "b",
                                            "amount": "x"}, constants={"currency": "USD"})
    result = validate(src.read(), build_rules(["USD"], False))
    assert result.valid["event_id"].to_list() == ["1", "3"]
    assert result.quarantine["reasons"].to_list() == [["event_time_in_future"]]
    # an explicit clock (a backtest): the same rule against it
    past = validate(src.read(), build_rules(["USD"], False), now_us=0)
    assert past.by_reason == {"event_time_in_future": 3}


def test_paysim_steps_beyond_any_time_are_invalid_not_wrapped(tmp_path):
    for step in ("1e30", "2562047788"):
        bad = PAYSIM_ROW.replace("1,PAYMENT", f"{step},PAYMENT", 1).encode()
        result = _paysim(tmp_path, bad, name=f"s{step}.csv")
        assert result.quarantine["reasons"].to_list() == [["invalid_event_time"]], step
    assert GOOD  # the corpus' valid record is shared with the fuzzers


def test_nesting_depth_is_counted_not_left_to_the_parser():
    """json_too_deep does not depend on the interpreter's recursion limit or on how deep the
    parser's caller sits (a scorer process with a library that raised the limit parsed a
    1,000-deep record that another process refused): the depth is counted."""
    import sys

    from aml_pipeline.streaming.records import MAX_JSON_DEPTH, TOO_DEEP, _load

    deep = '{"a":' * 1000 + "1" + "}" * 1000
    limit = sys.getrecursionlimit()
    try:
        sys.setrecursionlimit(50_000)
        assert _load(deep)[1] == TOO_DEEP and _load("[" * 1000 + "]" * 1000)[1] == TOO_DEEP
    finally:
        sys.setrecursionlimit(limit)
    edge = '{"a":' * (MAX_JSON_DEPTH - 1) + "[1]" + "}" * (MAX_JSON_DEPTH - 1)
    assert _load(edge)[1] is None and _load(edge.replace("[1]", "[[1]]"))[1] == TOO_DEEP
    braces_in_text = '{"note": "' + "{[" * 500 + '\\" still text {", "amount": 1}'
    assert _load(braces_in_text) == ({"note": "{[" * 500 + '" still text {', "amount": 1}, None)
