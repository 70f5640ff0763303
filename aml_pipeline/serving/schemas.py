"""Request and response models of the scoring API (the OpenAPI document is generated from them).

A request is one transaction in the canonical schema (:mod:`aml_pipeline.schema`): the
required columns, the optional ones, and the extra columns the bundle's plan reads
(required when the plan needs them). Live events carry no label, typology or instance id.
Validation mirrors the row rules of :mod:`aml_pipeline.validation.rules`: ids not blank, at
most 256 characters and free of control characters, the amount a finite number > 0 (a JSON
number, not a string), the currency one of ``validation.currencies``, the event time
ISO-8601 *with* a UTC offset, representable in UTC and not later than the wall clock plus
``validation.max_future_skew``. Unknown fields are
refused, so a misspelt optional column cannot silently become a null.
"""

import re
import time
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, Strict, create_model, field_validator

from aml_pipeline.schema import CANONICAL_FIELDS, EXTRA_FIELDS
from aml_pipeline.validation.rules import CONTROL_CHARACTERS, HOUR_US, MAX_ID_CHARS

MAX_TEXT = MAX_ID_CHARS
_CONTROL = re.compile(CONTROL_CHARACTERS)
#: Canonical columns a live request never carries.
NOT_IN_REQUESTS = ("label", "typology", "instance_id", "flagged")


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    if _CONTROL.search(value):
        raise ValueError("control_character: must not hold control or line-separator characters")
    return value


def _iso_text(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("must be an ISO-8601 string with a UTC offset, e.g. 2025-01-25T09:30:00+01:00")
    return value


Id = Annotated[str, Strict(), Field(min_length=1, max_length=MAX_TEXT), AfterValidator(_not_blank)]
Text = Annotated[str, Strict(), Field(max_length=MAX_TEXT)]
Amount = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False, description="finite number > 0, in `currency`")]
Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]
EventTime = Annotated[AwareDatetime, BeforeValidator(_iso_text),
                      Field(description="ISO-8601 with a UTC offset, e.g. 2025-01-25T09:30:00Z")]

_TYPES = {
    "event_id": Id, "event_time": EventTime, "src_account": Id, "dst_account": Id, "amount": Amount,
    "currency": Annotated[str, Strict(), Field(min_length=3, max_length=8)], "channel": Id, "jurisdiction": Id,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def future_check(max_future_skew_us: int):
    """The event-time check of a request, as the batch and stream rules judge it: a time
    that cannot be written in UTC is ``invalid_event_time``; one later than the wall clock
    plus ``max_future_skew_us`` is ``event_time_in_future`` (it would move the account's
    history in the store past every later event)."""

    def check_event_time(cls, value: datetime) -> datetime:
        try:
            utc = value.astimezone(timezone.utc)
        except (OverflowError, ValueError):
            raise ValueError("invalid_event_time: cannot be represented in UTC") from None
        now = datetime.fromtimestamp(time.time(), tz=timezone.utc)
        if (utc - now).total_seconds() * 1e6 > max_future_skew_us:
            raise ValueError(f"event_time_in_future: later than the server's clock plus validation.max_future_skew "
                             f"({max_future_skew_us / 3.6e9:g}h)")
        return value

    return check_event_time


def transaction_model(currencies: list[str], plan_columns: list[str],
                      max_future_skew_us: int = HOUR_US) -> type[BaseModel]:
    """The request model for one transaction, for this deployment's currencies, plan and
    ``validation.max_future_skew``."""
    allowed = frozenset(currencies)
    fields: dict[str, Any] = {}
    for f in CANONICAL_FIELDS + EXTRA_FIELDS:
        if f.name in NOT_IN_REQUESTS:
            continue
        is_extra = f in EXTRA_FIELDS
        base = _TYPES.get(f.name) or (Number if str(f.dtype).startswith("Float") else Text)
        required = f.required or (is_extra and f.name in plan_columns)
        if required:
            fields[f.name] = (base, Field(..., description=f.doc))
        else:
            fields[f.name] = (Optional[base], Field(None, description=f.doc))

    def check_currency(cls, value: str) -> str:
        if value not in allowed:
            raise ValueError(f"unknown currency {value!r}; allowed: validation.currencies ({len(allowed)} codes)")
        return value

    def check_received(cls, value):
        if value is not None and value not in allowed:
            raise ValueError(f"unknown currency {value!r}; allowed: validation.currencies")
        return value

    validators = {"_currency": field_validator("currency")(check_currency),
                  "_currency_received": field_validator("currency_received")(check_received),
                  "_event_time": field_validator("event_time")(future_check(max_future_skew_us))}
    return create_model("Transaction", __base__=_Strict, __validators__=validators, **fields)


def batch_model(transaction: type[BaseModel], max_batch: int) -> type[BaseModel]:
    return create_model("BatchRequest", __base__=_Strict,
                        transactions=(list[transaction], Field(..., min_length=1, max_length=max_batch)))


class TopFeature(BaseModel):
    feature: str
    value: Optional[float] = Field(None, description="the feature's value for this event (null = missing)")
    contribution: Optional[float] = Field(None, description="SHAP contribution in log-odds (null when the model has none)")


class Decision(BaseModel):
    event_id: str
    event_time: str = Field(description="the event time in UTC")
    score: float = Field(description="P(laundering) from the model")
    alert: bool
    decision: Literal["alert", "no_alert"]
    threshold: float = Field(description="the jurisdiction's alert threshold; alert = score >= threshold")
    jurisdiction: str
    top_features: Optional[list[TopFeature]] = Field(None, description="top contributing features (per deploy.explain)")
    reasons: Optional[list[str]] = Field(None, description="the top features in plain words (with top_features)")
    model_name: str
    model_version: str
    run_id: Optional[str] = None
    config_hash: Optional[str] = None
    bundle_hash: str
    feature_engine: str
    replayed: bool = Field(description="true when the event id was scored before: the logged decision, state unchanged")
    latency_ms: float = Field(description="time in the service for this request")
    features: Optional[dict[str, Optional[float]]] = Field(None, description="every feature value (?include_features=true)")


class BatchResponse(BaseModel):
    results: list[Decision]
    latency_ms: float


class Health(BaseModel):
    status: Literal["ready", "starting", "failed", "unavailable"]
    detail: Optional[str] = None
    model_name: Optional[str] = None
    model_version: Optional[str] = None
    bundle_hash: Optional[str] = None
    feature_engine: Optional[str] = None
    store: Optional[dict[str, Any]] = None
    pid: Optional[int] = Field(None, description="the answering process (deploy.workers > 1: one of several)")


class ErrorBody(BaseModel):
    error: str
    fields: Optional[list[str]] = None
    detail: Optional[list[dict[str, Any]]] = None
