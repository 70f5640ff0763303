"""IBM AMLSim output folders, in the early (2019 sample) format or the newer (v2) format.

``path`` is the output folder. ``format=auto`` looks at the header of ``transactions.csv``:
``sourceNodeId,targetNodeId,value,time`` is the early format, ``tran_id,orig_acct,...`` v2.

**Early format** (``nodes.csv`` + ``transactions.csv``): labels are per *account*
(``nodes.csv`` ``isFraud``), so a transaction's label is derived from its two ends by
``label_rule``: ``both`` (sender and receiver are fraud accounts), ``either``, ``source``
(sender) or ``target`` (receiver).

What ``fraudStep`` means, read from the IBM samples (20K_cycle200, 20K_fanin200,
20K_fanin200cycle200): it is the step of the account's *first outgoing laundering
transfer*. Every laundering burst (the same amount sent 2-5 times in one step between two
fraud accounts; 1,857 rows in cycle200) has ``time >= fraudStep`` of its *sender* (in 1,807
of them ``time == fraudStep``), never earlier. ``fraudStep = -1`` marks a fraud account
that never sent a laundering transfer in the simulated period: the collecting account of a
fan-in (339 of the 364 fan-in burst rows go to such an account) or the hop where an
unfinished cycle stopped. It does not mean "never fraud": those accounts do *receive*
laundered money, and the receiver of a burst often has a fraudStep later than the burst
(it forwards the money later), 660 of 1,857 bursts in cycle200.

So ``respect_fraud_step`` applies the step to the *sending* end only: a fraud account counts
as a laundering sender for transactions with ``time >= fraudStep`` (fraudStep -1: never),
and as a laundering receiver at any time. Applying the step to the receiver as well would
drop most true laundering transfers (in cycle200 only 731 of the 3,686 transactions between
two fraud accounts would remain, against 2,211 with the sender-side reading, and 138 of
3,435 in fanin200). ``respect_fraud_step`` therefore changes nothing for ``label_rule=target``.

Accounts missing from ``nodes.csv`` (or with an unreadable flag or step) have an unknown
fraud status; labels combine with three-valued logic, so such a transaction is labelled
when the other end decides (``both`` with a known non-fraud end is 0) and is null, i.e.
quarantined as ``invalid_label``, otherwise.

``event_time`` = ``start`` + ``time`` x ``step`` (AMLSim's ``time`` is a step counter
starting at 1 in the samples); ``event_id`` = ``<file stem>:<line>``; ``channel`` =
``unknown``; ``typology`` = the configured ``typology`` on positives (the early format does
not record it); ``currency``/``jurisdiction`` from config.

**v2 format** (``transactions.csv`` ``tran_id,orig_acct,bene_acct,tx_type,base_amt,
tran_timestamp,is_sar,alert_id``): ``event_id`` = ``tran_id``, ``label`` = ``is_sar``,
``channel`` = ``tx_type``, ``instance_id`` = ``alert_id`` on positives. ``typology`` (on
positives) = ``alert_type`` of ``alert_transactions.csv`` by ``tran_id``, falling back to
``alert_accounts.csv`` by ``alert_id``; either file may be absent. ``accounts.csv``, when
present, gives ``bank_id`` and ``country`` of both ends; ``jurisdiction`` = the sender's
country, else the configured one. ``currency`` is the configured one.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from aml_pipeline.errors import DataSourceError
from aml_pipeline.sources import delimited
from aml_pipeline.sources.base import (
    Source,
    flag,
    number,
    offset_time,
    option,
    raw,
    read_text_table,
    require_file,
    row_event_id,
    staged,
    text,
    timestamp,
    typology_name,
)
from aml_pipeline.timeutil import config_duration_us, config_time

FORMATS = ("auto", "early", "v2")
LABEL_RULES = ("both", "either", "source", "target")
EARLY_NODES = ["nodeid", "isFraud", "fraudStep"]
EARLY_TRANSACTIONS = ["sourceNodeId", "targetNodeId", "value", "time"]
V2_TRANSACTIONS = ["tran_id", "orig_acct", "bene_acct", "tx_type", "base_amt", "tran_timestamp", "is_sar", "alert_id"]


def _whole(expr: pl.Expr) -> pl.Expr:
    """A whole number parsed from text as Int64; anything else (1.5, x, blank) is null."""
    v = number(expr)
    return pl.when(v.is_finite() & (v == v.floor())).then(v).cast(pl.Int64)


def _lookup(path: Path, key: str, values: list[str]) -> pl.DataFrame:
    """``key`` -> ``values`` from a side file, first row per key (no row multiplication on join)."""
    t = read_text_table(path, "amlsim", [key, *values])
    return (t.select(text(raw(key)).alias(key), *[text(raw(v)).alias(v) for v in values])
            .filter(pl.col(key).is_not_null()).unique(subset=key, keep="first", maintain_order=True))


class AmlSimSource(Source):
    name = "amlsim"
    has_labels = True

    def __init__(self, path: str, format: str = "auto", label_rule: str = "both", respect_fraud_step: bool = True,
                 typology: str | None = None, start: str = "2025-01-01T00:00:00Z", step: str = "1d",
                 currency: str = "USD", jurisdiction: str = "US") -> None:
        self.path = path
        self.format = option(format, FORMATS, "source.format")
        self.label_rule = option(label_rule, LABEL_RULES, "source.label_rule")
        self.respect_fraud_step = bool(respect_fraud_step)
        self.typology = typology
        self.start = config_time(start, "source.start")
        self.step_us = config_duration_us(step, "source.step")
        self.currency = str(currency).strip().upper()
        self.jurisdiction = jurisdiction

    def describe(self) -> str:
        return f"amlsim {self.path}"

    # ------------------------------------------------------------------ helpers
    def _folder(self) -> Path:
        folder = Path(self.path)
        if not folder.is_dir():
            raise DataSourceError(f"amlsim: folder not found: {folder} (set source.path to an AMLSim output folder)")
        return folder

    def detect_format(self, transactions: Path) -> str:
        """``early`` or ``v2`` from the header of ``transactions.csv`` (when format=auto)."""
        if self.format != "auto":
            return self.format
        require_file(transactions, "amlsim")
        try:  # the header only; read_text_table reports empty or malformed files properly later
            with open(transactions, "rb") as f:
                first = delimited.normalise(f.readline(), "amlsim", str(transactions)).split(b"\n", 1)[0]
            names = set(delimited.header_names(first, ",")) - {""}
        except (DataSourceError, OSError):
            names = set()
        if not names:
            read_text_table(transactions, "amlsim", [])  # raises the precise structural error
        if {"sourceNodeId", "targetNodeId"} <= names:
            return "early"
        if {"tran_id", "orig_acct", "bene_acct"} <= names:
            return "v2"
        raise DataSourceError(
            f"amlsim: {transactions}: cannot tell the format from the header (found: {', '.join(sorted(names)[:12])}); "
            "expected sourceNodeId,targetNodeId,... (early) or tran_id,orig_acct,bene_acct,... (v2), or set source.format")

    def read(self) -> pl.DataFrame:
        folder = self._folder()
        transactions = folder / "transactions.csv"
        fmt = self.detect_format(transactions)
        return self._read_early(folder) if fmt == "early" else self._read_v2(folder)

    # ------------------------------------------------------------------ early format
    def _read_early(self, folder: Path) -> pl.DataFrame:
        tx_path = folder / "transactions.csv"
        tx = read_text_table(tx_path, "amlsim", EARLY_TRANSACTIONS)
        nodes = read_text_table(folder / "nodes.csv", "amlsim", EARLY_NODES)
        nodes = (nodes.select(text(raw("nodeid")).alias("nodeid"), (flag(raw("isFraud")) == 1).alias("fraud"),
                              _whole(raw("fraudStep")).alias("fraud_step"))
                 .filter(pl.col("nodeid").is_not_null())
                 .unique(subset="nodeid", keep="first", maintain_order=True))
        tx = tx.with_columns(text(raw("sourceNodeId")).alias("_src"), text(raw("targetNodeId")).alias("_dst"),
                             _whole(raw("time")).alias("_time"))
        tx = (tx.join(nodes.rename({"nodeid": "_src", "fraud": "_src_fraud", "fraud_step": "_src_step"}),
                      on="_src", how="left", maintain_order="left")
                .join(nodes.rename({"nodeid": "_dst", "fraud": "_dst_fraud", "fraud_step": "_dst_step"}),
                      on="_dst", how="left", maintain_order="left"))

        sender = pl.col("_src_fraud")
        if self.respect_fraud_step:
            # Sender-side only: see the module doc for why (fraudStep = first laundering send).
            # Kleene logic: a known non-fraud sender is False even when its step is unreadable.
            sender = sender & (pl.col("_src_step") >= 0) & (pl.col("_time") >= pl.col("_src_step"))
        receiver = pl.col("_dst_fraud")
        positive = {"both": sender & receiver, "either": sender | receiver,
                    "source": sender, "target": receiver}[self.label_rule]
        label = pl.when(positive).then(pl.lit(1, pl.Int8)).when(~positive).then(pl.lit(0, pl.Int8)).otherwise(None)

        event_time = offset_time(self.start, pl.col("_time").cast(pl.Float64) * self.step_us)
        return staged(tx, {
            "event_id": row_event_id(tx_path.stem),
            "event_time": event_time,
            "src_account": pl.col("_src"),
            "dst_account": pl.col("_dst"),
            "amount": number(raw("value")),
            "currency": pl.lit(self.currency),
            "channel": pl.lit("unknown"),
            "jurisdiction": pl.lit(self.jurisdiction),
            "label": label,
            "typology": pl.when(label == 1).then(typology_name(pl.lit(self.typology, pl.String))),
        })

    # ------------------------------------------------------------------ v2 format
    def _read_v2(self, folder: Path) -> pl.DataFrame:
        tx = read_text_table(folder / "transactions.csv", "amlsim", V2_TRANSACTIONS)
        tx = tx.with_columns(text(raw("tran_id")).alias("_tran"), text(raw("alert_id")).alias("_alert"),
                             text(raw("orig_acct")).alias("_src"), text(raw("bene_acct")).alias("_dst"))
        typology_sources = []
        if (folder / "alert_transactions.csv").is_file():
            by_tran = _lookup(folder / "alert_transactions.csv", "tran_id", ["alert_type"])
            tx = tx.join(by_tran.rename({"tran_id": "_tran", "alert_type": "_type_by_tran"}), on="_tran", how="left",
                         maintain_order="left")
            typology_sources.append(pl.col("_type_by_tran"))
        if (folder / "alert_accounts.csv").is_file():
            by_alert = _lookup(folder / "alert_accounts.csv", "alert_id", ["alert_type"])
            tx = tx.join(by_alert.rename({"alert_id": "_alert", "alert_type": "_type_by_alert"}), on="_alert",
                         how="left", maintain_order="left")
            typology_sources.append(pl.col("_type_by_alert"))
        has_accounts = (folder / "accounts.csv").is_file()
        if has_accounts:
            accounts = _lookup(folder / "accounts.csv", "acct_id", ["bank_id", "country"])
            for end in ("src", "dst"):
                tx = tx.join(accounts.rename({"acct_id": f"_{end}", "bank_id": f"_{end}_bank", "country": f"_{end}_country"}),
                             on=f"_{end}", how="left", maintain_order="left")

        label = flag(raw("is_sar"))
        positive = label == 1
        typology = typology_name(pl.coalesce(typology_sources)) if typology_sources else pl.lit(None, pl.String)
        alert = pl.col("_alert")
        columns = {
            "event_id": pl.col("_tran"),
            "event_time": timestamp(raw("tran_timestamp"), None),
            "src_account": pl.col("_src"),
            "dst_account": pl.col("_dst"),
            "amount": number(raw("base_amt")),
            "currency": pl.lit(self.currency),
            "channel": pl.coalesce(text(raw("tx_type")), pl.lit("unknown")),
            "jurisdiction": pl.lit(self.jurisdiction),
            "label": label,
            "typology": pl.when(positive).then(typology),
            # alert_id -1 means "no alert" in AMLSim; never an instance id.
            "instance_id": pl.when(positive & alert.is_not_null() & (alert != "-1")).then(alert),
        }
        if has_accounts:
            columns |= {
                "src_bank": pl.col("_src_bank"), "dst_bank": pl.col("_dst_bank"),
                "src_country": pl.col("_src_country").str.to_uppercase(),
                "dst_country": pl.col("_dst_country").str.to_uppercase(),
                "jurisdiction": pl.coalesce(pl.col("_src_country").str.to_uppercase(), pl.lit(self.jurisdiction)),
            }
        return staged(tx, columns)
