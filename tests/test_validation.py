"""Validation with quarantine on deliberately corrupted copies of real slices.

Each test writes a corrupted copy of ``tests/data/paysim_head3000.csv`` (or of the AMLSim v2
slice) into tmp_path, reads it through the adapter and checks the exact reconciliation
(rows read = valid + quarantined = data lines in the file), the exact reason counts and that
every quarantined row points at the corrupted line and carries the original text.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aml_pipeline.errors import DataSourceError
from aml_pipeline.sources.amlsim import AmlSimSource
from aml_pipeline.sources.paysim import PaySimSource
from aml_pipeline.sources.tabular import TabularSource
from aml_pipeline.validation import build_rules, validate

DATA = Path(__file__).resolve().parent / "data"
PAYSIM = DATA / "paysim_head3000.csv"
RULES = build_rules(["USD"], require_label=True)
N = 40  # data rows in the corrupted copies (file lines 2..41)


def paysim_lines(n: int = N) -> list[str]:
    """Header + the first ``n`` data lines of the real slice, without line endings."""
    return PAYSIM.read_text().splitlines()[: n + 1]


def set_field(line: str, field: str, value: str, sep: str = ",") -> str:
    header = paysim_lines(0)[0].split(",")
    parts = line.split(sep)
    parts[header.index(field)] = value
    return sep.join(parts)


def write(path: Path, lines: list[str], end: str = "\n") -> Path:
    path.write_text(end.join(lines) + end)
    return path


def data_lines(path: Path) -> int:
    with open(path, newline="") as f:
        return sum(1 for _ in f) - 1


def check_reconciles(result, path: Path) -> None:
    assert result.reconciles()
    assert result.rows_read == result.rows_valid + result.rows_quarantined == data_lines(path)


def record(result, line: int) -> dict:
    row = result.quarantine.filter(result.quarantine["source_line"] == line).to_dicts()
    assert len(row) == 1, f"line {line} not quarantined exactly once"
    return row[0]


# ------------------------------------------------------------------------ bad values
CORRUPTIONS = [
    # (file line, field, value, reasons)
    (5, "amount", "12x.5", ["invalid_amount"]),
    (6, "amount", "nan", ["invalid_amount"]),
    (7, "amount", "inf", ["invalid_amount"]),
    (8, "amount", "-5", ["invalid_amount"]),
    (9, "amount", "0", ["invalid_amount"]),
    (10, "step", "", ["invalid_event_time"]),
    (11, "step", "x", ["invalid_event_time"]),
    (12, "step", "0", ["invalid_event_time"]),  # PaySim steps start at 1
    (13, "step", "1.5", ["invalid_event_time"]),
    (14, "nameOrig", "", ["missing_src_account"]),
    (15, "nameDest", "  ", ["missing_dst_account"]),
    (16, "isFraud", "2", ["invalid_label"]),
    (17, "isFraud", "", ["invalid_label"]),
]


def corrupted_paysim(tmp_path: Path) -> Path:
    lines = paysim_lines()
    for line, field, value, _ in CORRUPTIONS:
        lines[line - 1] = set_field(lines[line - 1], field, value)
    # A bad balance is kept as null: balances are features, not validated fields.
    lines[17] = set_field(lines[17], "oldbalanceOrg", "abc")  # file line 18
    return write(tmp_path / "paysim_bad_values.csv", lines)


def test_bad_values_are_quarantined_exactly(tmp_path):
    path = corrupted_paysim(tmp_path)
    result = validate(PaySimSource(str(path)).read(), RULES)
    check_reconciles(result, path)
    assert result.rows_read == N
    assert result.rows_quarantined == len(CORRUPTIONS) == 13
    assert result.by_reason == {"invalid_amount": 5, "invalid_event_time": 4, "missing_src_account": 1,
                                "missing_dst_account": 1, "invalid_label": 2}
    assert result.quarantine["source_line"].to_list() == [c[0] for c in CORRUPTIONS]
    header = paysim_lines(0)[0].split(",")
    written = path.read_text().splitlines()
    for line, field, value, reasons in CORRUPTIONS:
        q = record(result, line)
        assert q["source_file"] == str(path)
        assert q["event_id"] == f"paysim_bad_values:{line}"
        assert q["reasons"] == reasons
        raw = json.loads(q["record"])
        assert raw == dict(zip(header, written[line - 1].split(",")))  # the original text, as written
        assert raw[field] == value
    valid = result.valid
    assert valid.filter(valid["event_id"] == "paysim_bad_values:18")["src_balance_before"].to_list() == [None]


def test_blank_line_and_all_blank_fields(tmp_path):
    lines = paysim_lines()
    lines[20] = ""  # file line 21 becomes an empty line
    path = write(tmp_path / "paysim_blank.csv", lines)
    result = validate(PaySimSource(str(path)).read(), RULES)
    check_reconciles(result, path)
    assert result.rows_quarantined == 1
    q = record(result, 21)
    assert q["reasons"] == ["too_few_fields"]  # one field where the header has 11
    assert json.loads(q["record"]) == ""  # the line's text, as read


# ------------------------------------------------------------------------ duplicates
def test_duplicate_and_missing_event_ids_amlsim_v2(tmp_path):
    folder = tmp_path / "v2"
    folder.mkdir()
    src_lines = (DATA / "amlsim_v2_fanin" / "transactions.csv").read_text().splitlines()[:31]  # 30 rows
    lines = src_lines + [src_lines[1], src_lines[5].replace("5,", ",", 1)]
    # line 32 repeats line 2 (tran_id 1); line 33 is line 6 with its tran_id blanked
    assert lines[32].startswith(",")
    path = write(folder / "transactions.csv", lines, end="\r\n")
    result = validate(AmlSimSource(str(folder)).read(), RULES)
    check_reconciles(result, path)
    assert result.rows_read == 32
    assert result.by_reason == {"duplicate_event_id": 1, "missing_event_id": 1}
    assert record(result, 32)["reasons"] == ["duplicate_event_id"]
    assert record(result, 32)["event_id"] == "1"
    assert json.loads(record(result, 32)["record"])["tran_id"] == "1"
    assert record(result, 33)["reasons"] == ["missing_event_id"]
    # the first occurrence (line 2) stays valid
    assert result.valid.filter(result.valid["event_id"] == "1").height == 1


def test_duplicate_ids_tabular(tmp_path):
    path = tmp_path / "ids.csv"
    path.write_text("id,t,a,b,x\nA,2025-01-01,p,q,1\nB,2025-01-01,p,q,2\nA,2025-01-02,p,q,3\nA,2025-01-03,p,q,4\n")
    src = TabularSource(str(path), columns={"event_id": "id", "event_time": "t", "src_account": "a",
                                            "dst_account": "b", "amount": "x"}, constants={"currency": "USD"})
    result = validate(src.read(), build_rules(["USD"], src.has_labels))
    check_reconciles(result, path)
    assert result.by_reason == {"duplicate_event_id": 2}
    assert result.quarantine["source_line"].to_list() == [4, 5]


# ------------------------------------------------------------------------ truncated file
def test_truncated_last_line(tmp_path):
    lines = paysim_lines()
    # line 41 was 1,PAYMENT,3295.19,C711197015,233633.0,... ; cut inside nameOrig, no final newline
    lines[-1] = lines[-1][: len("1,PAYMENT,3295.19,C7111")]
    path = tmp_path / "paysim_truncated.csv"
    path.write_text("\n".join(lines))
    result = validate(PaySimSource(str(path)).read(), RULES)
    check_reconciles(result, path)
    assert result.rows_read == N
    assert result.by_reason == {"too_few_fields": 1}
    q = record(result, 41)
    assert q["reasons"] == ["too_few_fields"]
    assert json.loads(q["record"]) == "1,PAYMENT,3295.19,C7111"  # the line's text, as read


# ------------------------------------------------------------------------ structural errors
def test_missing_column_names_file_and_column(tmp_path):
    lines = [",".join(p for i, p in enumerate(line.split(",")) if i != 2) for line in paysim_lines()]  # drop amount
    path = write(tmp_path / "paysim_no_amount.csv", lines)
    with pytest.raises(DataSourceError) as exc:
        PaySimSource(str(path)).read()
    message = str(exc.value)
    assert "\n" not in message
    assert str(path) in message and "'amount'" in message


def test_renamed_column_is_missing(tmp_path):
    lines = paysim_lines()
    lines[0] = lines[0].replace("isFraud", "is_fraud")
    path = write(tmp_path / "paysim_renamed.csv", lines)
    with pytest.raises(DataSourceError, match=r"'isFraud' is missing"):
        PaySimSource(str(path)).read()


def test_wrong_delimiter_is_named(tmp_path):
    path = write(tmp_path / "paysim_semicolon.csv", [line.replace(",", ";") for line in paysim_lines()])
    with pytest.raises(DataSourceError) as exc:
        PaySimSource(str(path)).read()
    message = str(exc.value)
    assert str(path) in message and "delimiter" in message and "';'" in message
    # and with the right separator it reads cleanly
    result = validate(PaySimSource(str(path), separator=";").read(), RULES)
    check_reconciles(result, path)
    assert result.rows_valid == N


def test_missing_and_empty_file(tmp_path):
    with pytest.raises(DataSourceError, match="file not found"):
        PaySimSource(str(tmp_path / "nope.csv")).read()
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataSourceError, match="empty"):
        PaySimSource(str(tmp_path / "empty.csv")).read()


def test_amlworld_header_checks(tmp_path):
    from aml_pipeline.sources.amlworld import AmlWorldSource

    trans = (DATA / "amlworld" / "HI-Medium_head319_Trans.csv").read_text().splitlines()[:6]
    semi = write(tmp_path / "semi_Trans.csv", [line.replace(",", ";") for line in trans])
    with pytest.raises(DataSourceError) as exc:
        AmlWorldSource(str(semi)).read()
    assert str(semi) in str(exc.value) and "';'" in str(exc.value) and "delimiter" in str(exc.value)
    other = write(tmp_path / "paysim_as_Trans.csv", paysim_lines(5)[:1] + [",".join(["1"] * 11)])
    with pytest.raises(DataSourceError) as exc:
        AmlWorldSource(str(other)).read()
    assert str(other) in str(exc.value) and "'Timestamp'" in str(exc.value)
    # a row cut short in an AMLworld slice: counted, quarantined, traced to its line
    cut = write(tmp_path / "cut_Trans.csv", trans[:-1] + [trans[-1][:30]])
    result = validate(AmlWorldSource(str(cut)).read(), build_rules(["USD"], True))
    check_reconciles(result, cut)
    assert result.rows_read == 5
    assert result.by_reason == {"too_few_fields": 1}
    assert record(result, 6)["reasons"] == ["too_few_fields"]
    assert json.loads(record(result, 6)["record"]) == trans[-1][:30]
