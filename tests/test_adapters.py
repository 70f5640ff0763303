"""Source adapters on real data slices (tests/data, see its README): counts, labels,
typologies, times and amounts that a reader can check in the files themselves."""

from __future__ import annotations

import csv
import shutil
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest

from aml_pipeline.errors import ConfigError, DataSourceError
from aml_pipeline.schema import ALL_COLUMNS, CANONICAL_COLUMNS, SOURCE_FILE, SOURCE_LINE
from aml_pipeline.sources.amlsim import AmlSimSource
from aml_pipeline.sources.amlworld import AmlWorldSource, read_patterns
from aml_pipeline.sources.paysim import PaySimSource
from aml_pipeline.sources.tabular import TabularSource
from aml_pipeline.validation import build_rules, validate

DATA = Path(__file__).resolve().parent / "data"
CURRENCIES = ["AUD", "BRL", "BTC", "CAD", "CHF", "CNY", "EUR", "GBP", "ILS", "INR", "JPY", "MXN", "RUB", "SAR", "USD"]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def row_at(frame: pl.DataFrame, line: int) -> dict:
    """The staged row read from file line ``line`` (header = line 1)."""
    rows = frame.filter(pl.col(SOURCE_LINE) == line).to_dicts()
    assert len(rows) == 1
    return rows[0]


def data_lines(path: Path) -> int:
    with open(path, newline="") as f:
        return sum(1 for _ in f) - 1


def assert_staged_shape(frame: pl.DataFrame) -> None:
    """Canonical columns in order and type, then extras, bookkeeping and raw text."""
    assert frame.columns[: len(CANONICAL_COLUMNS)] == list(CANONICAL_COLUMNS)
    for name, dtype in ALL_COLUMNS.items():
        if name in frame.columns:
            assert frame.schema[name] == dtype, name
    assert {SOURCE_FILE, SOURCE_LINE} <= set(frame.columns)
    assert frame["channel"].null_count() == 0
    assert frame["jurisdiction"].null_count() == 0


# ============================================================================ PaySim
@pytest.fixture(scope="module")
def paysim() -> pl.DataFrame:
    return PaySimSource(str(DATA / "paysim_head3000.csv")).read()


def test_paysim_counts_and_fraud(paysim):
    assert_staged_shape(paysim)
    assert paysim.height == 3000 == data_lines(DATA / "paysim_head3000.csv")
    # Independent count with the csv module: 16 isFraud=1 rows, all in step 1.
    with open(DATA / "paysim_head3000.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sum(r["isFraud"] == "1" for r in rows) == 16
    assert paysim["label"].sum() == 16
    assert paysim["flagged"].sum() == 0
    assert paysim["typology"].null_count() == 3000
    # step 1 = the first hour (start itself), step 2 = start + 1 h.
    by_hour = dict(paysim.group_by("event_time").len().iter_rows())
    assert by_hour == {utc(2025, 1, 1, 0): 2708, utc(2025, 1, 1, 1): 292}
    result = validate(paysim, build_rules(["USD"], True))
    assert result.rows_valid == 3000 and result.by_reason == {}


def test_paysim_rows_as_in_the_file(paysim):
    # line 2: 1,PAYMENT,9839.64,C1231006815,170136.0,160296.36,M1979787155,0.0,0.0,0,0
    r = row_at(paysim, 2)
    assert r["event_id"] == "paysim_head3000:2"
    assert r["event_time"] == utc(2025, 1, 1, 0)
    assert (r["src_account"], r["dst_account"], r["amount"]) == ("C1231006815", "M1979787155", 9839.64)
    assert (r["channel"], r["currency"], r["jurisdiction"]) == ("PAYMENT", "USD", "US")
    assert r["merchant"] == "M1979787155"
    assert (r["src_balance_before"], r["src_balance_after"]) == (170136.0, 160296.36)
    assert (r["dst_balance_before"], r["dst_balance_after"]) == (0.0, 0.0)
    assert (r["label"], r["flagged"]) == (0, 0)
    assert r["raw:amount"] == "9839.64"
    # line 4: 1,TRANSFER,181.0,C1305486145,181.0,0.0,C553264065,0.0,0.0,1,0 (fraud, no merchant)
    r = row_at(paysim, 4)
    assert (r["channel"], r["amount"], r["label"], r["merchant"]) == ("TRANSFER", 181.0, 1, None)
    # line 86: ...,C1590550415,900180.0,1.916920493E7,0,0 (scientific notation)
    r = row_at(paysim, 86)
    assert r["dst_balance_after"] == pytest.approx(19169204.93)
    assert r["raw:newbalanceDest"] == "1.916920493E7"
    # line 2710: 2,PAYMENT,1826.81,C70165127,... (first row of step 2)
    r = row_at(paysim, 2710)
    assert (r["event_time"], r["amount"], r["src_account"]) == (utc(2025, 1, 1, 1), 1826.81, "C70165127")


def test_paysim_float_labels_and_start():
    src = PaySimSource(str(DATA / "paysim_random_head1000.csv"), start="2024-06-01T08:00:00+02:00", currency="eur")
    frame = src.read()
    assert frame.height == 1000
    # isFraud written as 1.0/0.0 by pandas: 28 positives in this slice.
    assert frame["label"].value_counts().sort("label").rows() == [(0, 972), (1, 28)]
    assert frame["flagged"].to_list() == [0] * 1000
    # line 2: 17,PAYMENT,38398.68,... -> start (06:00 UTC) + 16 h
    r = row_at(frame, 2)
    assert (r["event_time"], r["amount"], r["currency"]) == (utc(2024, 6, 1, 22), 38398.68, "EUR")
    # line 102: 35,TRANSFER,122032.62,C133342319,...,1.0,0.0
    r = row_at(frame, 102)
    assert (r["label"], r["src_account"], r["event_time"]) == (1, "C133342319", utc(2024, 6, 2, 16))


def test_paysim_bad_start_is_a_config_error():
    with pytest.raises(ConfigError, match="source.start"):
        PaySimSource("x.csv", start="yesterday")


# ============================================================================ AMLSim early
EARLY = DATA / "amlsim_early_cycle"


def plain_early_labels(rule: str, respect_fraud_step: bool) -> int:
    """The expected positive count, computed with plain Python from the two CSV files."""
    with open(EARLY / "nodes.csv", newline="") as f:
        nodes = {r["nodeid"]: (r["isFraud"] == "1", int(r["fraudStep"])) for r in csv.DictReader(f)}
    count = 0
    with open(EARLY / "transactions.csv", newline="") as f:
        for r in csv.DictReader(f):
            s_fraud, s_step = nodes[r["sourceNodeId"]]
            t_fraud, _ = nodes[r["targetNodeId"]]
            sender = s_fraud and (not respect_fraud_step or (s_step >= 0 and int(r["time"]) >= s_step))
            count += {"both": sender and t_fraud, "either": sender or t_fraud,
                      "source": sender, "target": t_fraud}[rule]
    return count


@pytest.mark.parametrize("rule,respect,expected", [
    ("both", False, 138), ("both", True, 72), ("either", False, 868), ("either", True, 566),
    ("source", False, 460), ("source", True, 92), ("target", False, 546), ("target", True, 546),
])
def test_amlsim_early_label_rules(rule, respect, expected):
    frame = AmlSimSource(str(EARLY), label_rule=rule, respect_fraud_step=respect).read()
    assert frame.height == 5102
    assert frame["label"].null_count() == 0
    assert frame["label"].sum() == expected == plain_early_labels(rule, respect)


def test_amlsim_early_times_and_cycle_hops():
    frame = AmlSimSource(str(EARLY), format="early", label_rule="both", typology="cycle", step="1d").read()
    assert_staged_shape(frame)
    # time 48..51 -> start + time days
    by_day = dict(frame.group_by("event_time").len().iter_rows())
    assert by_day == {utc(2025, 2, 18): 1144, utc(2025, 2, 19): 1213, utc(2025, 2, 20): 1386, utc(2025, 2, 21): 1359}
    # nodes.csv: 17060,1,464.68,48 / 12600,1,206.48,51 / 5465,1,118.02,-1
    # line 167: 17060,12600,19.11,48 -- sender's fraudStep 48 <= 48: positive even though
    # the receiver's fraudStep (51) is later (it forwards the money at step 51).
    r = row_at(frame, 167)
    assert (r["src_account"], r["dst_account"], r["amount"], r["event_time"]) == ("17060", "12600", 19.11, utc(2025, 2, 18))
    assert (r["label"], r["typology"], r["event_id"], r["channel"]) == (1, "cycle", "transactions:167", "unknown")
    # line 4293: 12600,5465,19.11,51 -- the receiver's fraudStep is -1 (never forwarded): still positive.
    r = row_at(frame, 4293)
    assert (r["src_account"], r["dst_account"], r["label"]) == ("12600", "5465", 1)
    assert frame.filter(pl.col("label") == 0)["typology"].null_count() == frame.filter(pl.col("label") == 0).height
    assert frame["typology"].drop_nulls().unique().to_list() == ["cycle"]


def test_amlsim_early_step_hours(tmp_path):
    frame = AmlSimSource(str(EARLY), step="1h", start="2025-01-01T00:00:00Z").read()
    assert frame["event_time"].min() == utc(2025, 1, 3, 0)  # time 48 = 48 hours
    with pytest.raises(ConfigError, match="source.step"):
        AmlSimSource(str(EARLY), step="one day")


def test_amlsim_early_unknown_account_gives_null_label(tmp_path):
    folder = tmp_path / "early"
    folder.mkdir()
    (folder / "nodes.csv").write_text("nodeid,isFraud,init_balance,fraudStep\n1,1,10.0,0\n2,0,10.0,-1\n")
    (folder / "transactions.csv").write_text(
        "sourceNodeId,targetNodeId,value,time\n1,2,5.0,1\n1,9,5.0,1\n2,9,5.0,1\n")
    frame = AmlSimSource(str(folder), label_rule="both").read()
    # 1->2: fraud & non-fraud = 0; 1->9: fraud & unknown = null; 2->9: non-fraud & unknown = 0
    assert frame["label"].to_list() == [0, None, 0]
    either = AmlSimSource(str(folder), label_rule="either").read()
    assert either["label"].to_list() == [1, 1, None]


def test_amlsim_bad_options():
    with pytest.raises(ConfigError, match=r"source\.format.*auto, early, v2"):
        AmlSimSource("d", format="v3")
    with pytest.raises(ConfigError, match="source.label_rule"):
        AmlSimSource("d", label_rule="all")


def test_amlsim_missing_folder_and_file(tmp_path):
    with pytest.raises(DataSourceError, match="folder not found"):
        AmlSimSource(str(tmp_path / "nope")).read()
    (tmp_path / "transactions.csv").write_text("sourceNodeId,targetNodeId,value,time\n1,2,3.0,1\n")
    with pytest.raises(DataSourceError, match="nodes.csv"):
        AmlSimSource(str(tmp_path)).read()


# ============================================================================ AMLSim v2
V2 = DATA / "amlsim_v2_fanin"


def test_amlsim_v2_labels_typology_instances():
    frame = AmlSimSource(str(V2)).read()  # format=auto
    assert_staged_shape(frame)
    assert frame.height == 10333
    assert frame["label"].sum() == 51
    assert frame.filter(pl.col("label") == 1)["typology"].value_counts().rows() == [("fan_in", 51)]
    assert frame.filter(pl.col("label") == 0)["typology"].null_count() == 10282
    inst = dict(frame.filter(pl.col("label") == 1)["instance_id"].value_counts().iter_rows())
    assert inst == {"0": 21, "1": 16, "2": 14}
    assert frame.filter(pl.col("label") == 0)["instance_id"].null_count() == 10282
    # line 2: 1,50,62,WIRE,234.08,2011-01-01T00:00:00Z,True,0 ; accounts.csv: 50 and 62 at uae_bank, US
    r = row_at(frame, 2)
    assert (r["event_id"], r["src_account"], r["dst_account"], r["amount"]) == ("1", "50", "62", 234.08)
    assert (r["event_time"], r["channel"], r["label"], r["typology"], r["instance_id"]) == (
        utc(2011, 1, 1), "WIRE", 1, "fan_in", "0")
    assert (r["src_bank"], r["dst_bank"], r["src_country"], r["jurisdiction"]) == ("uae_bank", "uae_bank", "US", "US")
    # line 3: 2,80,77,TRANSFER,979.21,...,False,-1
    r = row_at(frame, 3)
    assert (r["label"], r["typology"], r["instance_id"], r["src_bank"]) == (0, None, None, "ind_bank")
    assert frame["event_time"].max() == utc(2012, 12, 20)
    result = validate(frame, build_rules(["USD"], True))
    assert result.rows_valid == 10333 and result.by_reason == {}


def test_amlsim_v2_typology_fallbacks(tmp_path):
    folder = tmp_path / "v2"
    shutil.copytree(V2, folder)
    (folder / "alert_transactions.csv").unlink()  # typology now from alert_accounts.csv by alert_id
    frame = AmlSimSource(str(folder), format="v2").read()
    assert frame.filter(pl.col("label") == 1)["typology"].value_counts().rows() == [("fan_in", 51)]
    (folder / "alert_accounts.csv").unlink()
    (folder / "accounts.csv").unlink()
    frame = AmlSimSource(str(folder)).read()
    assert frame["typology"].null_count() == 10333
    assert frame["src_bank"].null_count() == 10333
    assert frame["jurisdiction"].unique().to_list() == ["US"]
    assert frame["instance_id"].drop_nulls().len() == 51


def test_amlsim_format_mismatch_names_file_and_column(tmp_path):
    with pytest.raises(DataSourceError) as exc:
        AmlSimSource(str(V2), format="early").read()
    assert "transactions.csv" in str(exc.value) and "sourceNodeId" in str(exc.value)


# ============================================================================ AMLworld
HI_TRANS = DATA / "amlworld" / "HI-Medium_head319_Trans.csv"
HI_PATTERNS = DATA / "amlworld" / "HI-Medium_head297_Patterns.txt"
LI_TRANS = DATA / "amlworld" / "LI-Medium_head42_Trans.csv"
LI_PATTERNS = DATA / "amlworld" / "LI-Medium_head42_Patterns.txt"


def plain_pattern_types(path: Path) -> dict[str, tuple[int, int]]:
    """typology -> (attempts, transaction lines), counted with a plain loop over the file."""
    out: dict[str, list[int]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("BEGIN LAUNDERING ATTEMPT - "):
            current = line.split(" - ", 1)[1].split(":")[0].strip().lower().replace("-", "_")
            out.setdefault(current, [0, 0])[0] += 1
        elif line.startswith("END"):
            current = None
        elif line and current:
            out[current][1] += 1
    return {k: tuple(v) for k, v in out.items()}


def test_amlworld_typology_join_counts():
    frame = AmlWorldSource(str(HI_TRANS), patterns=str(HI_PATTERNS)).read()
    assert_staged_shape(frame)
    assert frame.height == 230 == data_lines(HI_TRANS)
    assert frame["label"].to_list() == [1] * 230
    expected = plain_pattern_types(HI_PATTERNS)
    assert expected == {"stack": (3, 18), "cycle": (4, 36), "fan_in": (6, 48), "gather_scatter": (2, 26),
                        "bipartite": (4, 25), "fan_out": (8, 53), "scatter_gather": (1, 8)}
    got = {t: (a, n) for t, a, n in frame.group_by("typology")
           .agg(pl.col("instance_id").n_unique(), pl.len()).iter_rows() if t is not None}
    assert got == expected
    # The last CYCLE (11 lines) and BIPARTITE (5 lines) of the Trans slice are not in the Patterns slice.
    assert frame["typology"].null_count() == 16
    assert frame.filter(pl.col("typology").is_null())[SOURCE_LINE].to_list() == list(range(216, 232))
    assert frame["instance_id"].n_unique() == 28 + 1  # 28 attempts and null


def test_amlworld_rows_as_in_the_file():
    frame = AmlWorldSource(str(HI_TRANS), patterns=str(HI_PATTERNS)).read()
    # line 2: 2022/09/01 05:14,00952,8139F54E0,0111632,8062C56E0,5331.44,US Dollar,5331.44,US Dollar,ACH,1
    r = row_at(frame, 2)
    assert r["event_id"] == "HI-Medium_head319_Trans:2"
    assert r["event_time"] == utc(2022, 9, 1, 5, 14)
    assert (r["src_account"], r["dst_account"]) == ("00952:8139F54E0", "0111632:8062C56E0")
    assert (r["src_bank"], r["dst_bank"], r["channel"]) == ("00952", "0111632", "ACH")
    assert (r["amount"], r["currency"], r["amount_received"], r["currency_received"]) == (5331.44, "USD", 5331.44, "USD")
    assert (r["typology"], r["instance_id"]) == ("stack", "HI-Medium_head297_Patterns-1")
    assert r["raw:From Account"] == "8139F54E0" and r["raw:To Account"] == "8062C56E0"
    # line 8: first line of attempt 2, "CYCLE:  Max 12 hops": ...,132713.46,Yuan,132713.46,Yuan,ACH,1
    r = row_at(frame, 8)
    assert (r["amount"], r["currency"], r["typology"], r["instance_id"]) == (132713.46, "CNY", "cycle", "HI-Medium_head297_Patterns-2")
    currencies = set(frame["currency"].unique().to_list())
    assert currencies == {"USD", "EUR", "CNY", "JPY", "RUB", "GBP", "CAD"}
    result = validate(frame, build_rules(CURRENCIES, True))
    assert result.rows_valid == 230 and result.by_reason == {}


def test_amlworld_crlf_files():
    frame = AmlWorldSource(str(LI_TRANS), patterns=str(LI_PATTERNS)).read()
    assert frame.height == 31
    expected = plain_pattern_types(LI_PATTERNS)
    assert expected == {"scatter_gather": (1, 22), "stack": (1, 4), "fan_out": (1, 4), "fan_in": (1, 1)}
    got = {t: (a, n) for t, a, n in frame.group_by("typology").agg(pl.col("instance_id").n_unique(), pl.len()).iter_rows()}
    assert got == expected
    assert not any("\r" in v for v in frame["raw:Is Laundering"].to_list())
    assert frame["label"].to_list() == [1] * 31


def test_amlworld_without_patterns_and_timezone():
    frame = AmlWorldSource(str(HI_TRANS), timezone="Asia/Tokyo", jurisdiction="JP").read()
    assert frame["typology"].null_count() == 230 and frame["instance_id"].null_count() == 230
    assert row_at(frame, 2)["event_time"] == utc(2022, 8, 31, 20, 14)  # 05:14 JST
    assert frame["jurisdiction"].unique().to_list() == ["JP"]


def test_amlworld_first_attempt_wins_and_unknown_currency(tmp_path):
    header = HI_TRANS.read_text().splitlines()[0]
    a = "2022/09/01 05:14,00952,8139F54E0,0111632,8062C56E0,5331.44,US Dollar,5331.44,US Dollar,ACH,1"
    b = "2022/09/02 10:00,001,AAA,002,BBB,100.00,Zloty,90.00,Euro,Wire,0"
    (tmp_path / "t_Trans.csv").write_text(f"{header}\n{a}\n{b}\n")
    (tmp_path / "t_Patterns.txt").write_text(
        "BEGIN LAUNDERING ATTEMPT - FAN-OUT\r\n" + a + "\r\nEND LAUNDERING ATTEMPT - FAN-OUT\r\n\r\n"
        "BEGIN LAUNDERING ATTEMPT - RANDOM:  Max 5 hops\r\n" + a.replace("5331.44", "5331.440") + "\r\n"
        "END LAUNDERING ATTEMPT - RANDOM\r\n")
    frame = AmlWorldSource(str(tmp_path / "t_Trans.csv"), patterns=str(tmp_path / "t_Patterns.txt")).read()
    assert frame.height == 2  # the join does not multiply rows
    assert (frame["typology"][0], frame["instance_id"][0]) == ("fan_out", "t_Patterns-1")
    assert frame["typology"][1] is None
    # cross-currency: amount = Amount Paid in Payment Currency; unknown names kept as written
    r = row_at(frame, 3)
    assert (r["amount"], r["currency"], r["amount_received"], r["currency_received"]) == (90.0, "EUR", 100.0, "Zloty")
    assert read_patterns(tmp_path / "t_Patterns.txt").height == 1  # same transaction listed twice
    result = validate(frame, build_rules(CURRENCIES, True))
    assert result.by_reason == {} and result.rows_valid == 2  # currency_received is not validated
    (tmp_path / "u_Trans.csv").write_text(f"{header}\n{b.replace(',Euro,', ',Zloty,')}\n")
    result = validate(AmlWorldSource(str(tmp_path / "u_Trans.csv")).read(), build_rules(CURRENCIES, True))
    assert result.by_reason == {"unknown_currency": 1}


# ============================================================================ tabular
def bank_csv(tmp_path: Path) -> Path:
    p = tmp_path / "bank_export.csv"
    p.write_text(
        "txn;booked;debtor;creditor;cents;sar;cc;kind\n"
        "T1;01.03.2025 10:00;A;B;12345;Y;DE;SEPA\n"      # CET: 09:00 UTC
        "T2;01.07.2025 10:00;A;C;99;N;;\n"                # CEST: 08:00 UTC, no country, no kind
        "T3;30.03.2025 02:30;B;C;500;y;fr;CARD\n"         # does not exist in Europe/Berlin (DST gap)
    )
    return p


def bank_source(path: Path, **kw) -> TabularSource:
    args = dict(
        separator=";",
        columns={"event_id": "txn", "event_time": "booked", "src_account": "debtor", "dst_account": "creditor",
                 "amount": "cents", "label": "sar", "src_country": "cc", "channel": "kind"},
        constants={"currency": "EUR"}, time_format="%d.%m.%Y %H:%M", timezone="Europe/Berlin",
        amount_scale=0.01, positive_labels=["Y"], jurisdiction="NL")
    args.update(kw)
    return TabularSource(str(path), **args)


def test_tabular_csv_minor_units_and_timezone(tmp_path):
    src = bank_source(bank_csv(tmp_path))
    assert src.has_labels
    frame = src.read()
    assert_staged_shape(frame)
    assert frame["event_id"].to_list() == ["T1", "T2", "T3"]
    assert frame["event_time"].to_list() == [utc(2025, 3, 1, 9), utc(2025, 7, 1, 8), None]
    assert frame["amount"].to_list() == [123.45, 0.99, 5.0]
    assert frame["currency"].to_list() == ["EUR"] * 3
    assert frame["label"].to_list() == [1, 0, 1]  # positive_labels compare case-insensitively
    assert frame["channel"].to_list() == ["SEPA", "unknown", "CARD"]
    assert frame["jurisdiction"].to_list() == ["DE", "NL", "FR"]  # codes upper-cased
    result = validate(frame, build_rules(["EUR"], src.has_labels))
    assert result.by_reason == {"invalid_event_time": 1}
    assert result.quarantine["source_line"].to_list() == [4]


def test_tabular_parquet(tmp_path):
    p = tmp_path / "export.parquet"
    pl.DataFrame({
        "id": ["a", "b", "c"],
        "ts": [datetime(2025, 1, 1, 12), datetime(2025, 7, 1, 12), None],
        "from": ["x", "y", "z"], "to": ["y", "z", "x"],
        "amt": [100, 250, 75], "ccy": ["usd", "USD", "USD"],
    }).write_parquet(p)
    src = TabularSource(str(p), format="parquet", timezone="America/New_York", amount_scale=0.01,
                        columns={"event_id": "id", "event_time": "ts", "src_account": "from", "dst_account": "to",
                                 "amount": "amt", "currency": "ccy"})
    assert not src.has_labels
    frame = src.read()
    assert frame["event_time"].to_list() == [utc(2025, 1, 1, 17), utc(2025, 7, 1, 16), None]
    assert frame["amount"].to_list() == [1.0, 2.5, 0.75]
    assert frame["currency"].to_list() == ["USD"] * 3
    assert frame["label"].null_count() == 3
    assert frame[SOURCE_LINE].to_list() == [1, 2, 3]
    result = validate(frame, build_rules(["USD"], src.has_labels))
    assert result.by_reason == {"invalid_event_time": 1}
    assert '"amt":"75"' in result.quarantine["record"][0]


def test_tabular_defaults_event_id_and_iso_times(tmp_path):
    p = tmp_path / "plain.csv"
    p.write_text("when,a,b,v\n2025-01-01T10:00:00+01:00,x,y,1.5\n2025-01-01 10:00,x,y,2\n2025-01-01T10:00Z,x,y,3\n")
    src = TabularSource(str(p), columns={"event_time": "when", "src_account": "a", "dst_account": "b", "amount": "v"},
                        constants={"currency": "USD"})
    frame = src.read()
    assert frame["event_id"].to_list() == ["plain:2", "plain:3", "plain:4"]
    assert frame["event_time"].to_list() == [utc(2025, 1, 1, 9), utc(2025, 1, 1, 10), utc(2025, 1, 1, 10)]
    assert frame["channel"].to_list() == ["unknown"] * 3
    assert frame["jurisdiction"].to_list() == ["US"] * 3


def test_tabular_config_errors(tmp_path):
    with pytest.raises(ConfigError) as exc:
        TabularSource("x.csv", columns={"amout": "amount"})
    assert "source.columns.amout" in str(exc.value) and "event_time" in str(exc.value)
    with pytest.raises(ConfigError, match="source.constants.ccy"):
        TabularSource("x.csv", constants={"ccy": "EUR"})
    with pytest.raises(ConfigError, match="source.format"):
        TabularSource("x.csv", format="xlsx")
    p = bank_csv(tmp_path)
    with pytest.raises(ConfigError, match="source.columns.amount"):
        bank_source(p, columns={"event_time": "booked", "src_account": "debtor", "dst_account": "creditor"}).read()
    with pytest.raises(ConfigError, match="currency"):
        bank_source(p, constants={}).read()
    with pytest.raises(DataSourceError) as exc:
        bank_source(p, columns={"event_time": "booked", "src_account": "debtor", "dst_account": "creditor",
                                "amount": "amount_cents"}).read()
    assert "bank_export.csv" in str(exc.value) and "amount_cents" in str(exc.value)
