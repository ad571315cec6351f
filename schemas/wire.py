"""The one encode/decode path of every Kafka value: pydantic v2 models serialised by orjson.

Every model carries a schema version ``v``. A reader accepts the versions it knows and refuses
others with a clear error; unknown fields are refused too, so a typo or a producer ahead of its
consumers is caught at the boundary rather than silently dropped.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

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

    SCHEMA_VERSION: ClassVar[int] = 1
    v: int = 1

    @field_validator("v")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != cls.SCHEMA_VERSION:
            raise ValueError(
                f"schema version {v} is not supported (this reader knows v{cls.SCHEMA_VERSION})"
            )
        return v


def encode(value: WireModel) -> bytes:
    """Serialise a wire model to JSON bytes: the same JSON as ``model_dump(mode="json")``
    (tests hold them equal), written by orjson straight from the validated fields, which is
    several times faster on the ingest hot path. orjson writes enums as their values."""
    # orjson's result keeps its ~8 KiB write buffer allocated; an exact-size copy (0.2 µs)
    # makes a round of 20,000 encoded records hold 13 MiB instead of 160 MiB
    return memoryview(orjson.dumps(value.__dict__, default=_nested)).tobytes()


def _nested(value: object) -> object:
    if isinstance(value, BaseModel):
        return value.__dict__
    raise TypeError(f"cannot serialise {type(value).__name__}")


def decode(model: type[M], payload: bytes | bytearray | memoryview | str) -> M:
    """Parse and validate one topic value (or any JSON document a model describes: a
    notification payload, a JSONB column), raising WireError naming the bad field."""
    try:
        data: Any = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise WireError(model.__name__, "", f"not JSON: {exc}") from None
    return validate(model, data)


def validate(model: type[M], data: Any) -> M:
    """Validate already-parsed data into ``model``, raising WireError naming the bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in first["loc"])
        raise WireError(model.__name__, field, first["msg"]) from None
