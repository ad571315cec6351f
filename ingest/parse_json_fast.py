"""The JSON line's fast path, in two tiers, both deciding nothing the reference path
(ingest/parse_json.py + the model) would decide otherwise:

1. **The record's line** (deploy/haproxy/haproxy.cfg's log-format writes LogRecord's own JSON
   but ``v`` and ``src``: ``ts`` in milliseconds, the fingerprint as its int32, bare numbers,
   null for an absent sample): the model's fast decoder (schemas/fast_decode.py, msgspec,
   generated from the model) validates it as it is, and msgspec writes the values back with
   ``v`` and the position. No conversion, no Python object per field.
2. **The earlier line** (quoted numbers, ``ts`` in seconds, the hex fingerprint, "-" for an
   absent sample), and whatever tier 1 does not take: pydantic-core validates the line's bytes
   straight into LogRecord's own field schemas, in one call, with the reference path's three
   conversions in front of their fields.

Tier 2's schema is derived from ``LogRecord.__pydantic_core_schema__`` when this module loads: every
field keeps the model's own validator (types, bounds, patterns, enums, the model's functions);
only what HAProxy's line needs before the model sees it is put in front of three fields, with
the same functions the reference path calls (``ts`` in seconds, the fingerprint's hex, the
path's prefix). So there is no second set of field rules that could drift from the model. A
LogRecord whose core schema holds more than per-field rules (a model validator, computed
fields, aliases) makes the fast path refuse to build (FastPathUnavailable): the parser then
uses the reference path alone, and tests/test_parse_fast.py fails until this module learns
the new rule.

It only ever **accepts or defers**: a line it cannot take exactly as the reference path would
(not valid, a value "-" or "" that the reference reads as absent, no request id, a converter
that raises) gives None, and the caller runs the reference path, which decides, with its
reason. tests/test_parse_fast.py holds the two equal, record by record and byte for byte, on a
hypothesis-generated corpus of valid and invalid lines.

Tier 1 reads no conversion, so the reference path reads the record's line as it is too (an
integer ``ts`` of milliseconds, a JSON number as the fingerprint's int32); its ``v`` and ``src``
are ingest's, never the line's (a line that holds them has them ignored, on both paths), and
unknown keys are ignored as on the reference path.

What it writes is what ``encode(record)`` writes: the validated values, in field order (by
msgspec in tier 1, orjson in tier 2: the same JSON), with the source position last. The
position is ingest's own (a file's identity and offset, a listener's stream and count), not
input: its stream is validated by the model once per stream, and its JSON is kept and
completed with each line's offset. The Kafka key is ``log_key`` of the validated values.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter, itemgetter
from typing import Any, cast

import msgspec
import orjson
from pydantic_core import SchemaValidator
from pydantic_core import core_schema as cs

from meterstream.ingest.parse_fields import epoch_ms, fingerprint
from meterstream.ingest.parse_json import path_prefix
from meterstream.schemas import fast_decode
from meterstream.schemas.records import LogRecord, SourcePosition
from meterstream.schemas.topics import key_of, log_key

# HAProxy's values that the model cannot read as logged: the reference path's conversions
CONVERSIONS: dict[str, Callable[[Any], Any]] = {"ts": epoch_ms, "api_key_fp": fingerprint, "path": path_prefix}
# the path prefix leaves a path the model accepts (text of at most 10 characters) as it is, but
# "-" (absent: ""): HAProxy's config logs it cut already, so the model tries it as logged first,
# and the fast path defers a "-" it took so
AS_LOGGED_FIRST = frozenset({"path"})


class FastPathUnavailable(RuntimeError):
    """LogRecord's schema holds rules this path would not apply (see the module's doc)."""


def field_schemas(record_model: type[LogRecord] = LogRecord) -> tuple[dict[str, Any], dict[str, Any]]:
    """(typed-dict fields, core config) from the record model's core schema, or FastPathUnavailable."""
    model = record_model.__pydantic_core_schema__
    fields_schema = model.get("schema", {})
    plain = (model.get("type") == "model" and model.get("cls") is record_model and not model.get("post_init")
             and not model.get("custom_init") and not model.get("root_model")
             and fields_schema.get("type") == "model-fields" and not fields_schema.get("computed_fields")
             and not fields_schema.get("extras_schema") and "strict" not in fields_schema)
    if not plain:
        raise FastPathUnavailable(f"{record_model.__name__}'s core schema is not plain per-field rules (a model "
                                  "validator, computed fields, custom init?): ingest/parse_json_fast.py does not "
                                  "apply them")
    fields: dict[str, Any] = {}
    for name, field in fields_schema["fields"].items():
        if field.get("type") != "model-field" or field.get("validation_alias") is not None \
                or field.get("frozen") or field.get("exclude"):
            raise FastPathUnavailable(f"{record_model.__name__}.{name}: a field feature the fast path does not carry")
        schema = field["schema"]
        if name in CONVERSIONS:  # the model's own validator, after the reference path's conversion
            schema = _converted(schema, CONVERSIONS[name], name in AS_LOGGED_FIRST)
        fields[name] = cs.typed_dict_field(schema, required=schema.get("type") != "default")
    if list(fields)[-1] != "src":
        raise FastPathUnavailable(f"{record_model.__name__}.src is not its last field (records are written in "
                                  "field order, the position last)")
    config = {k: v for k, v in model.get("config", {}).items() if k not in ("extra_fields_behavior", "title")}
    return fields, config


def _converted(schema: Any, conversion: Callable[[Any], Any], as_logged_first: bool) -> Any:
    """``conversion`` before the field's validator; a default (an absent key) stays outermost.
    ``as_logged_first``: the value as logged is tried first, and converted only if the model
    refuses it (for a conversion that leaves every value the model accepts unchanged)."""
    if schema.get("type") == "default":
        return {**schema, "schema": _converted(schema["schema"], conversion, as_logged_first)}
    converted = cs.no_info_before_validator_function(conversion, schema)
    if as_logged_first:
        return cs.union_schema([schema, converted], mode="left_to_right")
    return converted


def _may_hold_text(schema: dict[str, Any]) -> bool:
    """Whether a value this core schema accepts can be a str (unknown kinds of schema: yes)."""
    kind = schema.get("type")
    if kind in ("int", "bool", "float", "none", "enum") and schema.get("sub_type") != "str":
        return False
    if kind in ("default", "nullable", "function-after", "function-before"):
        return _may_hold_text(schema["schema"])
    return True


_set = object.__setattr__


class FastJson:
    """Validates JSON lines into their haproxy.logs key and value, or defers (None) to the
    reference path."""

    def __init__(self, classic: bool = True) -> None:
        """``classic``: also validate the earlier line with pydantic-core (else only the
        record's line is taken: for tests that a line takes that tier)."""
        fields, config = field_schemas()
        self._classic = classic
        del fields["src"]  # ingest's own, written after the validated values (src_json)
        # unknown keys are ignored (a newer HAProxy config may log more), as on the reference path;
        # only keys are cached: values (ids, addresses) rarely repeat and would churn the cache
        self._validator = SchemaValidator(cs.typed_dict_schema(fields, extra_behavior="ignore"),
                                          config=cast(cs.CoreConfig, {**config, "cache_strings": "keys"}))
        # a value "-" or "" (however JSON spells it: "\\u002d" too) is an absent sample to the
        # reference path, which drops it before the model sees it: a line holding one in a field
        # a text can reach is deferred. Not in the converted fields, which read them as the
        # reference path does, but the path, tried as logged first; and not "" where "" is the
        # field's default, which is what the reference path makes of it too.
        texts = [name for name, field in fields.items()
                 if (name not in CONVERSIONS or name in AS_LOGGED_FIRST) and _may_hold_text(field["schema"])]
        empty_is_default = [name for name in texts if fields[name]["schema"].get("default", None) == ""]
        # the text fields, those where "" is not the default first: a line is deferred for "-" in
        # any of them, "" in those; read from the values (tier 2) or the Struct (tier 1) in this
        # order, with "ts" (never text) last so that one name still gives a tuple
        empty_absent = [n for n in texts if n not in empty_is_default]
        checked = [*empty_absent, *empty_is_default, "ts"]
        self._texts = itemgetter(*checked)
        self._line_texts = attrgetter(*checked)
        self._empty_absent = len(empty_absent)
        self._src_json: dict[str, bytes | None] = {}
        # the record's line (HAProxy's log-format writing LogRecord's JSON but `v` and `src`):
        # the model's fast decoder (schemas/fast_decode.py) takes it as it is, unknown keys (and a
        # forged `v` or `src`) ignored as on the reference path; the same absent-sample check,
        # on the decoded values
        self._record_line: Callable[[bytes], Any] | None
        try:
            _, self._record_line = fast_decode.values_decoder(LogRecord, omit=frozenset({"v", "src"}),
                                                              ignore_unknown=True)
        except fast_decode.FastPathUnavailable:
            self._record_line = None
        self._v_json = b'{"v":%d,' % LogRecord.model_fields["v"].default
        # key_of takes a LogRecord: one that holds each line's validated values in turn (never
        # handed out; key_of reads fields, and src, which it has no use for, is not among them)
        self._keyed = LogRecord.model_construct()

    @classmethod
    def build(cls) -> FastJson | None:
        try:
            return cls()
        except FastPathUnavailable:
            return None

    def src_json(self, stream: str) -> bytes | None:
        """``,"src":{"stream":"…","offset":`` for ``stream``, which the model validates once; None
        when it refuses it (the reference path then builds the position, and raises)."""
        try:
            return self._src_json[stream]
        except KeyError:
            pass
        if len(self._src_json) > 10_000:  # streams are few (files, listeners); bounded anyway
            self._src_json.clear()
        try:
            SourcePosition(stream=stream, offset=0)
            prefix: bytes | None = b',"src":{"stream":' + orjson.dumps(stream) + b',"offset":'
        except Exception:  # noqa: BLE001 - refused by the model, or not UTF-8
            prefix = None
        self._src_json[stream] = prefix
        return prefix

    def encoded_lines(self, lines: list[bytes], stream: str, offset: int) -> list[tuple[bytes, bytes, int] | None]:
        """``encoded`` of consecutive lines from ``offset`` on (each followed by its newline, so
        the next starts one byte after it ends): the same, in one loop (no call per line)."""
        src = self.src_json(stream)
        if src is None:
            return [None] * len(lines)
        validate, keyed = self._validator.validate_json, self._keyed
        values_texts = self._texts
        record_line, encode = self._record_line, msgspec.json.encode
        line_texts, empty_absent, v_json = self._line_texts, self._empty_absent, self._v_json
        classic = self._classic
        out: list[tuple[bytes, bytes, int] | None] = []
        append = out.append
        for raw in lines:
            done = None
            if raw[:1] == b"{":
                # the record's line first (no conversion, no second write), unless the line starts
                # as the earlier line does (`{"ts":1795600000.000,`), which msgspec would take 1.8
                # µs to refuse: which tier takes a line changes its time, nothing else
                if record_line is not None and raw.find(b".", 0, 20) < 0:
                    try:
                        line = record_line(raw)
                        texts = line_texts(line)
                        if not ("-" in texts or "" in texts[:empty_absent]):
                            done = log_key(line), v_json + encode(line)[1:-1] + src + b"%d}}" % offset, line.ts
                    except Exception:  # noqa: BLE001 - not the record's line, or not valid: the next tier
                        pass
                if done is None and classic:
                    try:
                        values = validate(raw)
                        texts = values_texts(values)
                        if not ("-" in texts or "" in texts[:empty_absent]):
                            _set(keyed, "__dict__", values)
                            done = key_of(keyed), orjson.dumps(values)[:-1] + src + b"%d}}" % offset, values["ts"]
                    except Exception:  # noqa: BLE001 - invalid, or a conversion's own error: the reference decides
                        pass
            append(done)
            offset += len(raw) + 1
        return out

    def encoded(self, raw: bytes, stream: str, offset: int) -> tuple[bytes, bytes, int] | None:
        """(key, value, ts) of ``raw`` (one line, without its newline) at ``stream``/``offset``,
        exactly as the reference path would write them; None when the reference path must decide."""
        return self.encoded_lines([raw], stream, offset)[0]
