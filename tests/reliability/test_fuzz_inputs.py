"""Property-based fuzzing of the batch adapters and the stream record parser: for any input,
no exception escapes, records in = valid + quarantined (dead-lettered), and a quarantined
row keeps its original text (a dead letter its original bytes).

The fast properties run in the default suite (profile ``fast``, see conftest.py); the same
properties with many more cases are marked ``slow``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from aml_pipeline.errors import DataSourceError
from aml_pipeline.sources.delimited import READ_ERRORS
from aml_pipeline.sources.paysim import PaySimSource
from aml_pipeline.sources.tabular import TabularSource
from aml_pipeline.streaming.job import file_records
from aml_pipeline.streaming.records import DEAD_RECORD_BYTES, RawRecord, check
from aml_pipeline.validation import build_rules, validate
from tests.reliability.conftest import LONG_EXAMPLES
from tests.reliability.corpus import CSV_CASES, PAYSIM_HEADER, STREAM_CASES
from tests.reliability.strategies import ANY_TEXT, csv_line, stream_text

RULES = build_rules(["USD"], require_label=True)
AMLWORLD_HEADER = ("Timestamp,From Bank,Account,To Bank,Account,Amount Received,Receiving Currency,Amount Paid,"
                   "Payment Currency,Payment Format,Is Laundering")
AMLWORLD_ROW = "2022/09/01 00:20,010,8000EBD30,010,8000EBD30,3697.34,US Dollar,3697.34,US Dollar,Reinvestment,0"
STREAM_RULES = build_rules(["USD"], require_label=False)
ENCODINGS = ("utf-8", "utf-8-sig", "utf-16")


def _text(line: bytes) -> str:
    return line.removesuffix(b"\r").decode("utf-8", errors="backslashreplace")


def check_paysim_file(lines: list[bytes], encoding: str = "utf-8", separator: str = ",",
                      header: str = PAYSIM_HEADER, source=None) -> None:
    """Write header + lines, read and validate: the invariants of every batch read."""
    header = header.replace(",", separator)
    source = source or (lambda path: PaySimSource(str(path), separator=separator))
    if encoding == "utf-8":
        data = header.encode() + b"".join(b"\n" + line for line in lines) + b"\n"
    else:
        text_lines = [line.decode("utf-8", errors="replace") for line in lines]
        data = ("\n".join([header, *text_lines]) + "\n").encode(encoding)
        lines = [t.encode("utf-8") for t in text_lines]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.csv"
        path.write_bytes(data)
        result = validate(source(path).read(), RULES)
    assert result.reconciles()
    quoted = any(b'"' in line for line in lines)
    if not quoted:  # no field can span lines: one row per line, exactly
        assert result.rows_read == len(lines)
    else:
        assert result.rows_read <= len(lines)
    for q in result.quarantine.iter_rows(named=True):
        original = lines[q["source_line"] - 2]
        record = json.loads(q["record"])
        if set(q["reasons"]) & set(READ_ERRORS):
            assert q["reasons"][0] in READ_ERRORS and len(q["reasons"]) == 1
            assert record == _text(original)  # the line's text, as read
        elif not quoted:
            assert list(record.values()) == _text(original).split(separator)  # its fields, as written


@given(st.lists(csv_line(), max_size=12))
@example([v for v, _ in CSV_CASES.values()])
def test_paysim_any_lines(lines):
    check_paysim_file(lines)


@given(st.lists(csv_line(), max_size=8), st.sampled_from(ENCODINGS))
def test_paysim_any_encoding(lines, encoding):
    check_paysim_file(lines, encoding)


@given(st.sampled_from([";", "\t", "|"]).flatmap(lambda s: st.tuples(st.just(s), st.lists(csv_line(s), max_size=8))))
def test_paysim_other_delimiters_and_mixed_lines(case):
    separator, lines = case
    check_paysim_file(lines, separator=separator)


@given(st.lists(st.one_of(csv_line(), st.just(AMLWORLD_ROW.encode())), max_size=10))
def test_amlworld_any_lines(lines):
    """AMLworld's adapter renames the header's columns (it repeats Account): same invariants."""
    from aml_pipeline.sources.amlworld import AmlWorldSource

    check_paysim_file(lines, header=AMLWORLD_HEADER, source=lambda path: AmlWorldSource(str(path)))


@given(st.binary(max_size=400))
@example(b"\xff\xfe\x00")
@example(b"a\nb\n")
@example(b'"')
def test_tabular_any_bytes_fail_only_with_one_line(data):
    """Arbitrary bytes as a whole file: a DataSourceError (one line) for a file without the
    mapped columns, else rows that reconcile."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "any.csv"
        path.write_bytes(b"id,t,a,b,x\n" + data if data[:1] != b"!" else data)
        src = TabularSource(str(path), columns={"event_id": "id", "event_time": "t", "src_account": "a", "dst_account": "b",
                                                "amount": "x"}, constants={"currency": "USD"})
        try:
            staged = src.read()
        except DataSourceError as exc:
            assert "\n" not in str(exc)
            return
        result = validate(staged, build_rules(["USD"], src.has_labels))
    assert result.reconciles()


# ----------------------------------------------------------------------------- stream records
def _records(values: list) -> list[RawRecord]:
    out = []
    for n, v in enumerate(values):
        pos = {"topic": "t", "partition": n % 2, "offset": n}
        if isinstance(v, bytes):
            try:
                out.append(RawRecord(v.decode("utf-8"), pos))
            except UnicodeDecodeError:
                out.append(RawRecord(None, pos, raw=v))
        else:
            out.append(RawRecord(v, pos))
    return out


def check_stream_batch(values: list) -> None:
    records = _records(values)
    checked = check(records, STREAM_RULES, known_ids=set())
    assert checked.valid.height + len(checked.dead) == len(records)
    offsets = [p["offset"] for p in checked.valid_positions] + [d["offset"] for d in checked.dead]
    assert sorted(offsets) == list(range(len(records)))  # each record exactly once
    for d in checked.dead:
        rec = records[d["offset"]]
        original = rec.raw if rec.text is None else rec.text.encode("utf-8", "surrogatepass")
        kept = base64.b64decode(d["record_base64"]) if rec.text is None else d["record"].encode("utf-8", "surrogatepass")
        assert d["reasons"]
        if len(original) > DEAD_RECORD_BYTES:
            assert original.startswith(kept) and d["record_sha256"] == hashlib.sha256(original).hexdigest()
        else:
            assert kept == original
        json.dumps(d, default=str)  # writable as it is


@given(st.lists(stream_text(), max_size=12))
@example([v for v, _ in STREAM_CASES.values()])
def test_stream_parser_any_records(values):
    check_stream_batch(values)


@given(st.lists(st.one_of(ANY_TEXT, st.sampled_from(["\u2028", "\u2029", "\x85", "\r", "\ufeff"])), max_size=20))
def test_file_stream_lines_any_text(parts):
    """A file's text cut only at \\n: one record per non-blank line, positions in order."""
    text = "".join(parts)
    records = file_records(pa.table({"path": ["file:///nowhere/part-0.jsonl"], "value": [text]}))
    expected = [line.removesuffix("\r") for line in text.removeprefix("\ufeff").split("\n")]
    assert [r.text for r in records] == [line for line in expected if line.strip()]
    check_stream_batch([r.text for r in records])


# ----------------------------------------------------------------------------- long runs
@pytest.mark.slow
@settings(max_examples=LONG_EXAMPLES)
@given(st.lists(csv_line(), max_size=40), st.sampled_from(ENCODINGS))
def test_paysim_any_lines_long(lines, encoding):
    check_paysim_file(lines, encoding)


@pytest.mark.slow
@settings(max_examples=LONG_EXAMPLES)
@given(st.lists(stream_text(), max_size=40))
def test_stream_parser_any_records_long(values):
    check_stream_batch(values)
