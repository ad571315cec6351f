"""The one encode/decode path of every Kafka value: pydantic v2 models serialised by orjson.

Every model carries a schema version ``v``. A reader accepts the versions it knows and refuses
others with a clear error; unknown fields are refused too, so a typo or a producer ahead of its
consumers is caught at the boundary rather than silently dropped.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import msgspec
import orjson
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

M = TypeVar("M", bound=BaseModel)


class WireError(ValueError):
    """A value that does not decode into its model; ``field`` names the first offending field."""

    def __init__(self, model: str, field: str, message: str) -> None:
        self.model = model
        self.field = field
        self.message = message
        super().__init__(f"{model}.{field}: {message}" if field else f"{model}: {message}")


class WireModel(BaseModel):
    """Base of every topic value. Immutable, strict about unknown fields, versioned."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)

    SCHEMA_VERSION: ClassVar[int] = 1  # what this model writes (a subclass that bumps it sets ``v`` too)
    # older versions this model still reads: their fields are a subset of this one's
    READS_ALSO: ClassVar[frozenset[int]] = frozenset()
    v: int = 1

    @field_validator("v")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != cls.SCHEMA_VERSION and v not in cls.READS_ALSO:
            raise ValueError(
                f"schema version {v} is not supported (this reader knows v{cls.SCHEMA_VERSION})"
            )
        return cls.SCHEMA_VERSION  # an older value is read as this version (it encodes as one)


def encode(value: WireModel) -> bytes:
    """Serialise a wire model to JSON bytes: the same JSON as ``model_dump(mode="json")``
    (tests hold them equal), written by orjson straight from the validated fields, which is
    several times faster on the ingest hot path. orjson writes enums as their values."""
    try:
        fields = value.__dict__
    except AttributeError:  # a fast decoder's Struct (schemas/fast_decode.py): msgspec writes the same JSON
        return msgspec.json.encode(value)
    return dumps_exact(fields, default=_nested)


def dumps_exact(obj: Any, default: Any = None) -> bytes:
    """orjson.dumps, exactly sized: orjson's result keeps its ~8 KiB write buffer allocated,
    and an exact-size copy (0.2 µs) makes a round of 20,000 encoded records hold 13 MiB
    instead of 160 MiB. Every value that is kept or queued is written with it."""
    return memoryview(orjson.dumps(obj, default=default)).tobytes()


def _nested(value: object) -> object:
    if isinstance(value, BaseModel):
        return value.__dict__
    raise TypeError(f"cannot serialise {type(value).__name__}")


def decode(model: type[M], payload: bytes | bytearray | memoryview | str | None) -> M:
    """Parse and validate one topic value (or any JSON document a model describes: a
    notification payload, a JSONB column), raising WireError naming the bad field.
    pydantic-core reads the JSON bytes straight into the model: no Python dict in between.
    A tombstone (None) is not a value."""
    if payload is None:
        raise WireError(model.__name__, "", "a tombstone (no value)")
    if isinstance(payload, memoryview):
        payload = payload.tobytes()
    try:  # the validator itself: model_validate_json's wrapper costs 10 % of a LogRecord
        return model.__pydantic_validator__.validate_json(payload)
    except ValidationError as exc:
        raise _wire_error(model, exc) from None


def _wire_error(model: type[BaseModel], exc: ValidationError) -> WireError:
    first = exc.errors(include_url=False, include_input=False)[0]
    if first["type"] == "json_invalid":
        return WireError(model.__name__, "", f"not JSON: {first['msg'].removeprefix('Invalid JSON: ')}")
    return WireError(model.__name__, ".".join(str(part) for part in first["loc"]), first["msg"])


def validate(model: type[M], data: Any) -> M:
    """Validate already-parsed data into ``model``, raising WireError naming the bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _wire_error(model, exc) from None
