"""The row-level rules every record must pass, declared once for every engine.

A rule is data (a reason code, a kind and a column), not code: each engine compiles the
same list into its own expressions (:mod:`.polars_engine` for polars; the Spark and
streaming engines compile the identical list), so a record is valid or quarantined for
the same reason wherever it is checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from aml_pipeline.timeutil import config_duration_us

RuleKind = Literal["not_blank", "not_null", "positive_finite", "in_set", "first_occurrence", "read_error", "not_after",
                   "plain_text", "max_length"]

HOUR_US = 3_600_000_000
#: Longest id or account accepted (the API's limit too).
MAX_ID_CHARS = 256
#: Characters an id or account must not hold: C0 and C1 controls, DEL, and the Unicode line
#: and paragraph separators. They split lines in logs and files, and the alert id is made by
#: joining ids with one of them.
CONTROL_CHARACTERS = r"[\x00-\x1f\x7f-\x9f\u2028\u2029]"
#: The read errors a text adapter reports in ``_read_error`` (:mod:`aml_pipeline.sources.delimited`).
READ_ERROR_DOCS = {
    "too_many_fields": "the line has more fields than the header (e.g. an unquoted 1,234.50); the record is its text",
    "too_few_fields": "the line has fewer fields than the header (cut short, blank, or another delimiter); the record is its text",
    "invalid_utf8": "the line is not UTF-8 (e.g. a Latin-1 byte); the record is its text, bad bytes written \\xNN",
    "malformed_quoting": "a quote in the line is never closed or is followed by text; the record is its text",
}


@dataclass(frozen=True)
class Rule:
    """A record violates the rule when its ``column`` fails the ``kind`` test.

    Kinds:
      - ``not_blank``: null or only whitespace fails (strings);
      - ``not_null``: null fails (typed values whose parse failed are null);
      - ``positive_finite``: null, NaN, ±inf or ≤ 0 fails;
      - ``in_set``: null or a value outside ``values`` fails;
      - ``first_occurrence``: any occurrence after the first (in source order) fails;
      - ``read_error``: the adapter could not split the line (``column`` holds this reason);
        a row failing such a rule fails no other (its fields were never read);
      - ``not_after``: a time later than the trusted clock plus ``limit`` microseconds fails
        (the clock is the caller's: wall clock when the records are read); null passes;
      - ``plain_text``: text holding a control character (:data:`CONTROL_CHARACTERS`) fails;
      - ``max_length``: text longer than ``limit`` characters fails.

    ``columns``: further columns checked by the same test (any failing fails the rule).
    """

    reason: str
    kind: RuleKind
    column: str
    doc: str
    values: tuple[str, ...] = field(default=())
    limit: int = 0
    columns: tuple[str, ...] = field(default=())

    @property
    def all_columns(self) -> tuple[str, ...]:
        return (self.column, *self.columns)


def build_rules(currencies: list[str] | tuple[str, ...], require_label: bool,
                max_future_skew_us: int = HOUR_US) -> list[Rule]:
    """The rule list for a run; ``require_label`` adds the label check for training data.

    ``max_future_skew_us``: how far past the trusted clock an event time may be
    (``validation.max_future_skew``, see :func:`future_skew_us`)."""
    ids = ("event_id", "src_account", "dst_account")
    rules = [Rule(reason, "read_error", "_read_error", doc) for reason, doc in READ_ERROR_DOCS.items()]
    rules += [
        Rule("missing_event_id", "not_blank", "event_id", "the event id is missing or blank"),
        Rule("duplicate_event_id", "first_occurrence", "event_id",
             "an earlier record (in source order) has the same event id; the first one is kept"),
        Rule("invalid_event_time", "not_null", "event_time", "the event time is missing or cannot be parsed"),
        Rule("event_time_in_future", "not_after", "event_time",
             "the event time is later than the trusted clock (the wall clock when read) plus validation.max_future_skew",
             limit=int(max_future_skew_us)),
        Rule("missing_src_account", "not_blank", "src_account", "the sending account is missing or blank"),
        Rule("missing_dst_account", "not_blank", "dst_account", "the receiving account is missing or blank"),
        Rule("control_character", "plain_text", ids[0], "the event id or an account holds a control or line-separator character",
             columns=ids[1:]),
        Rule("id_too_long", "max_length", ids[0], f"the event id or an account is longer than {MAX_ID_CHARS} characters",
             limit=MAX_ID_CHARS, columns=ids[1:]),
        Rule("invalid_amount", "positive_finite", "amount",
             "the amount is missing, not a number, infinite, zero or negative"),
        Rule("unknown_currency", "in_set", "currency", "the currency is missing or not in validation.currencies",
             tuple(sorted(set(currencies)))),
    ]
    if require_label:
        rules.append(Rule("invalid_label", "not_null", "label", "the label is missing or not one of 0/1"))
    return rules


def future_skew_us(value: object, key: str = "validation.max_future_skew") -> int:
    """``validation.max_future_skew`` (``1h``, ``30m``, ``1d``) in microseconds; ConfigError naming the key."""
    return config_duration_us(value, key)


def rules_from_config(validation, require_label: bool) -> list[Rule]:
    """The rule list from the ``validation`` config node (currencies, max_future_skew)."""
    return build_rules(list(validation.currencies), require_label,
                       future_skew_us(validation.get("max_future_skew", "1h")))


def rules_markdown(rules: list[Rule]) -> str:
    """Reason codes with their meaning, for the docs and the task's help."""
    return "\n".join(f"| `{r.reason}` | {r.doc} |" for r in rules)
