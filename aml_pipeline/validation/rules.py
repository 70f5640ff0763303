"""The row-level rules every record must pass, declared once for every engine.

A rule is data (a reason code, a kind and a column), not code: each engine compiles the
same list into its own expressions (:mod:`.polars_engine` for polars; the Spark and
streaming engines compile the identical list), so a record is valid or quarantined for
the same reason wherever it is checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

RuleKind = Literal["not_blank", "not_null", "positive_finite", "in_set", "first_occurrence"]


@dataclass(frozen=True)
class Rule:
    """A record violates the rule when its ``column`` fails the ``kind`` test.

    Kinds:
      - ``not_blank``: null or only whitespace fails (strings);
      - ``not_null``: null fails (typed values whose parse failed are null);
      - ``positive_finite``: null, NaN, ±inf or ≤ 0 fails;
      - ``in_set``: null or a value outside ``values`` fails;
      - ``first_occurrence``: any occurrence after the first (in source order) fails.
    """

    reason: str
    kind: RuleKind
    column: str
    doc: str
    values: tuple[str, ...] = field(default=())


def build_rules(currencies: list[str] | tuple[str, ...], require_label: bool) -> list[Rule]:
    """The rule list for a run; ``require_label`` adds the label check for training data."""
    rules = [
        Rule("missing_event_id", "not_blank", "event_id", "the event id is missing or blank"),
        Rule("duplicate_event_id", "first_occurrence", "event_id",
             "an earlier record (in source order) has the same event id; the first one is kept"),
        Rule("invalid_event_time", "not_null", "event_time", "the event time is missing or cannot be parsed"),
        Rule("missing_src_account", "not_blank", "src_account", "the sending account is missing or blank"),
        Rule("missing_dst_account", "not_blank", "dst_account", "the receiving account is missing or blank"),
        Rule("invalid_amount", "positive_finite", "amount",
             "the amount is missing, not a number, infinite, zero or negative"),
        Rule("unknown_currency", "in_set", "currency", "the currency is missing or not in validation.currencies",
             tuple(sorted(set(currencies)))),
    ]
    if require_label:
        rules.append(Rule("invalid_label", "not_null", "label", "the label is missing or not one of 0/1"))
    return rules


def rules_markdown(rules: list[Rule]) -> str:
    """Reason codes with their meaning, for the docs and the task's help."""
    return "\n".join(f"| `{r.reason}` | {r.doc} |" for r in rules)
