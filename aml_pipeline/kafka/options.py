"""The connector's options (Spark's names), checked on the driver with one-line errors.

Spark passes options as a case-insensitive string map; :func:`opt` looks them up that way.
``kafka.*`` options are librdkafka settings, passed through without the prefix
(:func:`client_config`); the few settings the connector manages itself are refused, as
Spark's connector refuses them. Our own options start with ``aml.`` (``aml.reader``,
``aml.prefetchRecords``); Spark's connector ignores them.

A malformed option raises :class:`~aml_pipeline.errors.ConfigError` naming it; inside a
Spark query the same error arrives wrapped in Spark's, and :func:`error_message` finds the
one line again.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Mapping

from aml_pipeline.errors import ConfigError
from aml_pipeline.kafka.offsets import Offsets

#: Client settings Spark's connector manages itself and refuses as ``kafka.*`` options.
MANAGED = {"key.deserializer", "value.deserializer", "key.serializer", "value.serializer",
           "enable.auto.commit", "auto.offset.reset", "interceptor.classes"}

#: ``aml.reader``: who reads a micro-batch's records (our option; Spark's connector has none).
READERS = ("driver", "tasks", "ranges")

#: Records per partition the driver reader keeps of what its consumer fetched past a
#: micro-batch's range (``aml.prefetchRecords``), rather than let the pause discard them.
PREFETCH_RECORDS = 20_000

#: ``kafkaConsumer.pollTimeoutMs`` when not given (Spark's default).
POLL_TIMEOUT_MS = 120_000


def opt(options: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    """Option lookup ignoring case (Spark passes options case-insensitively)."""
    low = name.lower()
    for key, value in options.items():
        if key.lower() == low:
            return value
    return default


def client_config(options: Mapping[str, str]) -> dict[str, str]:
    """The ``kafka.*`` options without their prefix: librdkafka settings, passed through.

    ``kafka.bootstrap.servers`` is required, as in Spark."""
    conf = {k[len("kafka."):]: str(v) for k, v in options.items() if k.lower().startswith("kafka.")}
    if not conf.get("bootstrap.servers"):
        raise ConfigError("option kafka.bootstrap.servers is required (e.g. 127.0.0.1:9092)")
    for key in conf:
        if key in MANAGED:
            raise ConfigError(f"option kafka.{key} is not supported: the connector manages it")
    return conf


def _bool(options: Mapping[str, str], name: str, default: bool) -> bool:
    text = opt(options, name)
    if text is None:
        return default
    if str(text).strip().lower() in ("true", "false"):
        return str(text).strip().lower() == "true"
    raise ConfigError(f"option {name} must be true or false, got {text!r}")


def reader_mode(options: Mapping[str, str]) -> str:
    """``driver`` (default: consumers kept open in the driver's source process), ``tasks`` (a
    Spark task per partition and micro-batch) or ``ranges`` (rows are offset ranges); the
    readers are in :mod:`aml_pipeline.kafka.source`."""
    mode = str(opt(options, "aml.reader", "driver")).strip().lower()
    if mode not in READERS:
        raise ConfigError(f"option aml.reader must be one of {', '.join(READERS)}, got {mode!r}")
    return mode


def _int_option(options: Mapping[str, str], name: str, minimum: int, default: int | None = None) -> int | None:
    """An integer option of at least ``minimum`` (``default`` when not given)."""
    text = opt(options, name)
    if text is None:
        return default
    try:
        value = int(str(text))
    except ValueError:
        value = minimum - 1
    if value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"option {name} must be {what}, got {text!r}")
    return value


def _positive_int(options: Mapping[str, str], name: str) -> int | None:
    return _int_option(options, name, 1)


def _offsets_spec(options: Mapping[str, str], name: str, default: str) -> str | Offsets:
    """``earliest`` | ``latest`` | Spark's JSON ``{"topic": {"0": 23, "1": -2}}``."""
    text = str(opt(options, name, default)).strip()
    if text.lower() in ("earliest", "latest"):
        return text.lower()
    try:
        spec = json.loads(text)
        if not isinstance(spec, dict) or not spec:
            raise ValueError
        return {str(t): {str(int(p)): int(o) for p, o in parts.items()} for t, parts in spec.items()}
    except (ValueError, TypeError, AttributeError):
        raise ConfigError(
            f"option {name} must be 'earliest', 'latest' or JSON like "
            f"{{\"topic\": {{\"0\": 42, \"1\": -2}}}}, got {text!r}") from None


@dataclass(frozen=True)
class SourceOptions:
    """The source's options, checked (Spark's names)."""

    client: dict[str, str]
    subscribe: tuple[str, ...]
    pattern: str | None
    assign: dict[str, tuple[int, ...]] | None
    starting: str | Offsets
    ending: str | Offsets
    max_offsets_per_trigger: int | None
    fail_on_data_loss: bool
    poll_timeout_ms: int
    prefetch_records: int = PREFETCH_RECORDS

    @classmethod
    def parse(cls, options: Mapping[str, str]) -> "SourceOptions":
        client = client_config(options)
        subscribe = tuple(t.strip() for t in str(opt(options, "subscribe", "")).split(",") if t.strip())
        pattern = opt(options, "subscribePattern")
        assign_text = opt(options, "assign")
        assign = None
        if assign_text is not None:
            try:
                raw = json.loads(assign_text)
                assign = {str(t): tuple(int(p) for p in ps) for t, ps in raw.items()}
            except (ValueError, TypeError, AttributeError):
                raise ConfigError(f"option assign must be JSON like {{\"topic\": [0, 1]}}, got {assign_text!r}") from None
        given = [n for n, v in (("subscribe", subscribe), ("subscribePattern", pattern), ("assign", assign)) if v]
        if len(given) != 1:
            raise ConfigError("exactly one of the options subscribe, subscribePattern, assign is required"
                              + (f" (got {', '.join(given)})" if given else ""))
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"option subscribePattern is not a valid regex: {exc}") from None
        reader_mode(options)
        ending = _offsets_spec(options, "endingOffsets", "latest")
        if ending == "earliest":
            raise ConfigError("option endingOffsets cannot be 'earliest'")
        return cls(
            client=client, subscribe=subscribe, pattern=pattern, assign=assign,
            starting=_offsets_spec(options, "startingOffsets", "latest"),
            ending=ending,
            max_offsets_per_trigger=_positive_int(options, "maxOffsetsPerTrigger"),
            fail_on_data_loss=_bool(options, "failOnDataLoss", True),
            poll_timeout_ms=_positive_int(options, "kafkaConsumer.pollTimeoutMs") or POLL_TIMEOUT_MS,
            prefetch_records=_int_option(options, "aml.prefetchRecords", 0, PREFETCH_RECORDS),
        )


def validate_source_options(options: Mapping[str, str]) -> SourceOptions:
    """Check source options on the driver before Spark sees them (one-line ConfigError)."""
    return SourceOptions.parse(options)


def validate_sink_options(options: Mapping[str, str], columns: list[str] | None = None) -> dict[str, str]:
    """Check sink options (and the DataFrame's columns when given); returns the client config."""
    conf = client_config(options)
    if columns is not None:
        check_sink_columns(columns, opt(options, "topic"))
    return conf


def check_sink_columns(columns: list[str], topic: str | None) -> None:
    """The sink takes ``value`` (required), ``key``, ``topic`` (unless the option is set) and ``partition``."""
    names = {c.lower() for c in columns}
    if "value" not in names:
        raise ConfigError(f"the Kafka sink needs a 'value' column (string or binary); got {sorted(columns)}")
    if not topic and "topic" not in names:
        raise ConfigError("the Kafka sink needs the option topic or a 'topic' column")
    if "headers" in names:
        raise ConfigError("the Kafka sink does not write a 'headers' column yet; drop it (or use Spark's format(\"kafka\"))")
    unknown = names - {"key", "value", "topic", "partition"}
    if unknown:
        raise ConfigError(f"the Kafka sink takes columns key, value, topic, partition; "
                          f"unexpected: {sorted(unknown)} (select or to_json them first)")


def error_message(exc: BaseException) -> str:
    """One line for a connector error that Spark wrapped in its own exception and traceback:
    the connector's ``ConfigError`` / ``RuntimeError`` text when there is one."""
    text = str(exc)
    found = re.search(r"(?:aml_pipeline\.errors\.\w+|RuntimeError|TimeoutError): (.+)", text)
    return found.group(1).strip() if found else (text.strip().splitlines() or [type(exc).__name__])[0]
