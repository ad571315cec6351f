"""A message of a sink topic -> the row of its table, or the refusal that dead-letters it.

Every value is validated by its wire model (schemas/), whose fields are bounded to what the
table's columns hold: in one pass from the message bytes by the model's fast decoder
(schemas/fast_decode.py: msgspec, generated from the model, which gives the field values
without building the model's instance), or by pydantic-core (``validate_json``) for what the
fast decoder defers, which decides and names the error. The handler then builds the row from
the fields (attribute access: the fast decoder's Struct and the model's instance alike).
Whatever the bytes, ``row_of`` returns a row or raises ``Refused``: the sink sends that message
to ``haproxy.logs.rejected`` (built by ``dead_letter``) and goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from pydantic import BaseModel, ValidationError

from meterstream.schemas.fast_decode import fast_decoder
from meterstream.schemas.records import RejectedLine, SourcePosition
from meterstream.schemas.wire import WireError

# reasons of the sink's dead letters (RejectedLine.reason)
NULL_VALUE = "null_value"  # a message without a value (a tombstone on a topic that has none)
INVALID_RECORD = "invalid_record"  # not a valid value of the topic's wire model
REFUSED_BY_POSTGRES = "refused_by_postgres"  # valid, but the table refused its row (sinks/isolate.py)


class Refused(Exception):
    """Why a message becomes a dead letter instead of a row."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def row_of(handler: ModuleType, value: bytes | None) -> tuple:
    """The row of ``handler.TABLE`` a message value makes; raises Refused."""
    if value is None:
        raise Refused(NULL_VALUE, "a message without a value (tombstone)")
    try:
        fields = _FAST[handler.MODEL](value)
    except KeyError:
        fields = _fast_values(handler.MODEL)(value)
    if fields is None:  # deferred: pydantic decides, and names the error
        try:
            fields = handler.MODEL.__pydantic_validator__.validate_json(value)  # = MODEL.model_validate_json
        except ValidationError as exc:
            raise Refused(INVALID_RECORD, str(_wire_error(handler.MODEL.__name__, exc))) from None
    try:
        return handler.row(fields)
    except (ValueError, OverflowError) as exc:  # a row builder's own check of a column
        raise Refused(INVALID_RECORD, f"{type(exc).__name__}: {exc}") from None


# model -> its fast decoder's values(): the fields, or None where pydantic must decide
_FAST: dict[type[BaseModel], Callable[[bytes], Any]] = {}


def _fast_values(model: type[BaseModel]) -> Callable[[bytes], Any]:
    decoder = fast_decoder(model)
    _FAST[model] = decoder.values if decoder is not None else (lambda value: None)
    return _FAST[model]


def _wire_error(model: str, exc: ValidationError) -> WireError:
    """The first error, as schemas.wire names it (model.field: message)."""
    first = exc.errors(include_url=False)[0]
    return WireError(model, ".".join(str(part) for part in first["loc"]), first["msg"])


def dead_letter(topic: str, partition: int, offset: int, value: bytes | None, refused: Refused,
                keep: int) -> RejectedLine:
    """The dead letter of a message: ``source`` is its topic, ``position`` its topic:partition
    and offset, ``raw`` its value (base64 when it is not UTF-8 text)."""
    position = SourcePosition(stream=f"{topic}:{partition}"[:256], offset=offset)
    return RejectedLine.of(value or b"", source=topic, position=position, reason=refused.reason,
                           detail=refused.detail, keep=keep)
