"""A fast validated decoder of a wire model's JSON, generated from the pydantic model itself.

pydantic-core spends 4-6 µs validating one LogRecord from its JSON bytes; msgspec decodes the
same bytes into a typed ``Struct``, with the same bounds checked in C, in about a fifth of that.
``FastDecoder(Model)`` derives such a Struct from ``Model.__pydantic_core_schema__`` (the
compiled form of the model's fields: the one definition of every rule stays in schemas/), then
turns a decoded Struct into the model's own instance, with the model's own functions run on it.

What the generator carries, from the core schema (anything else: ``FastPathUnavailable``, and
the model is decoded by pydantic alone):

- ``int`` with ge/gt/le/lt/multiple_of, ``bool``, ``str`` with min/max length and a pattern
  (Rust regex syntax translated to Python's where both mean the same: ``$`` is the end of the
  text in Rust, ``\\Z`` in Python; anything the translation does not know refuses the model),
  enums (the model's members), literals of str or int, ``X | None``, defaults, nested models;
- field functions (``AfterValidator``, ``field_validator`` in mode "after", without info) and
  model validators in mode "after": the model's own functions, run on the decoded values, only
  where pydantic runs them (not on a default, not on None of an optional);
- unknown fields refused or ignored as the model's ``extra`` says.

It **accepts or defers**: msgspec is stricter than pydantic's lax mode (``1.0``, ``"200"`` or
``true`` for an int, ``NaN``, ``Infinity``, ``1e400``, ``"true"`` for a bool: refused), so what it
accepts pydantic accepts too, with the same values; whatever it refuses (or a model function
raises on) goes to pydantic's ``validate_json``, which decides, with pydantic's error. So the
fast path never refuses a value, and errors, dead letters and their reasons stay pydantic's.
tests/test_fast_decode.py holds the two equal, value by value, on a generated corpus.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable
from enum import Enum
from itertools import compress, repeat
from operator import is_not
from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec
from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)
_set = object.__setattr__
_UNSET = msgspec.UNSET
# core-config keys that do not change what a model accepts (extra is read below)
_NEUTRAL_CONFIG = frozenset({"title", "extra_fields_behavior"})
_INT_BOUNDS = ("ge", "gt", "le", "lt", "multiple_of")
_IMMUTABLE_DEFAULTS = (type(None), bool, int, str, bytes, float, Enum, frozenset, tuple)


class FastPathUnavailable(TypeError):
    """The model's core schema holds something the generator does not carry exactly."""


class FastDecoder(Generic[M]):
    """The fast decoder of one model.

    - ``decode(payload)``: the model's instance, as ``Model.__pydantic_validator__.validate_json``
      gives it (equal fields in the model's order, the same ``model_fields_set``), or pydantic's
      ``ValidationError``: a drop-in for ``validate_json``;
    - ``fast(payload)``: that instance, or None when pydantic must decide (never raises);
    - ``values(payload)``: the same field values as attributes of the decoded ``Struct`` (defaults
      filled in, the model's field functions applied, nested models as Structs), without building
      the model's instance, or None when pydantic must decide; for a model with a model validator
      (which runs on the instance), the instance itself. For consumers that only read fields (the
      sink's rows)."""

    def __init__(self, model: type[M]) -> None:
        self.model = model
        pydantic = model.__pydantic_validator__.validate_json
        exact_builder = _Builder(model, values=False)
        self.struct: type[msgspec.Struct] = exact_builder.struct
        exact = _decode_then(exact_builder)
        try:
            values = _decode_then(_Builder(model, values=True))
        except _NoValuesPath:
            values = exact

        # closures, not methods: a call less per message (0.1 µs)
        def fast(payload: bytes | bytearray | memoryview | str) -> M | None:
            try:
                return exact(payload)
            except Exception:  # noqa: BLE001 - refused by msgspec or a model function: pydantic decides
                return None

        def fast_values(payload: bytes | bytearray | memoryview | str) -> Any:
            try:
                return values(payload)
            except Exception:  # noqa: BLE001 - refused by msgspec or a model function: pydantic decides
                return None

        def decode(payload: bytes | bytearray | memoryview | str) -> M:
            try:
                return exact(payload)
            except Exception:  # noqa: BLE001 - pydantic decides, and names the error
                if isinstance(payload, memoryview):
                    payload = payload.tobytes()
                return pydantic(payload)

        self.fast: Callable[[bytes | bytearray | memoryview | str], M | None] = fast
        self.values: Callable[[bytes | bytearray | memoryview | str], Any] = fast_values
        self.decode: Callable[[bytes | bytearray | memoryview | str], M] = decode


class _Defer(Exception):
    """The payload goes to pydantic."""


class _NoValuesPath(Exception):
    """A model validator: values() builds the instance."""


# JSON writes U+0000 inside a string only as this escape (a raw control character is not JSON:
# msgspec and pydantic both refuse it), so a payload without it holds no NUL in any string
_NUL_ESCAPE = b"\\u0000"
_NUL_ESCAPE_TEXT = "\\u0000"
# the patterns that only forbid NUL (schemas.types.Text), as python_pattern() writes them
_NUL_FREE_PATTERNS = frozenset({r"\A[^\x00]*\Z"})


def _decode_then(builder: _Builder) -> Callable[[Any], Any]:
    """payload -> msgspec's Struct -> the builder's result; raises where pydantic must decide."""
    try:
        decode = msgspec.json.Decoder(builder.struct).decode
    except (TypeError, ValueError) as exc:  # a type or bound msgspec does not take (a bound beyond int64)
        raise FastPathUnavailable(f"msgspec refuses the Struct: {exc}") from None
    convert = builder.convert
    if not builder.nul_free:
        return decode if convert is _AS_DECODED else lambda payload: convert(decode(payload))

    # a compiled search: 0.2 µs on a 400-byte line where bytes' `in` takes 0.5 (HAProxy's lines
    # hold escapes: its JSON writes "/" as "\/")
    nul_escape = re.compile(re.escape(_NUL_ESCAPE)).search

    def checked(payload: bytes | bytearray | memoryview | str) -> Any:
        # the text fields' "no NUL" pattern, checked once on the payload (0.05 µs where msgspec's
        # pattern check costs 0.35 µs a field)
        if isinstance(payload, memoryview):
            payload = payload.tobytes()
        if isinstance(payload, str):
            if "\\" in payload and _NUL_ESCAPE_TEXT in payload:
                raise _Defer
        elif b"\\" in payload and nul_escape(payload):  # one byte first: memchr (most values have no escape)
            raise _Defer
        return convert(decode(payload))

    return checked


_DECODERS: dict[type, FastDecoder[Any] | None] = {}
_MATCHED_MAX = 1024  # values remembered per pattern as matching it


def fast_decoder(model: type[M]) -> FastDecoder[M] | None:
    """The model's fast decoder (built once), or None when its schema holds rules the generator
    does not carry (the caller then uses pydantic alone)."""
    try:
        return _DECODERS[model]
    except KeyError:
        pass
    try:
        decoder: FastDecoder[Any] | None = FastDecoder(model)
    except FastPathUnavailable:
        decoder = None
    _DECODERS[model] = decoder
    return decoder


def values_decoder(model: type[BaseModel], *, omit: frozenset[str] = frozenset(),
                   ignore_unknown: bool = False) -> tuple[type[msgspec.Struct], Callable[[Any], Any]]:
    """(Struct, decode) for payloads that hold the model's fields but ``omit``, unknown keys
    ignored when ``ignore_unknown``: ``decode(payload)`` gives the Struct of the values, as
    ``FastDecoder.values`` does, and **raises** (any exception) where pydantic must decide. For a
    caller that completes the omitted fields itself (ingest's line, without its position) and
    catches in its own loop. FastPathUnavailable when the model has no values path."""
    if omit - set(model.model_fields):
        raise FastPathUnavailable(f"{model.__name__} has no field {sorted(omit - set(model.model_fields))}")
    try:
        builder = _Builder(model, values=True, omit=omit, ignore_unknown=ignore_unknown)
    except _NoValuesPath:
        raise FastPathUnavailable(f"{model.__name__}: a model validator runs on the instance") from None
    return builder.struct, _decode_then(builder)


def decode(model: type[M], payload: bytes | bytearray | memoryview | str | None) -> M:
    """``schemas.wire.decode`` with the fast path in front: the model's instance (equal to what
    pydantic's validate_json gives); whatever the fast decoder defers, and every error, is
    ``wire.decode``'s own (WireError naming the field, with pydantic's message). A drop-in for
    the worker. On this machine it costs about what pydantic does for a LogRecord (building a
    pydantic instance in Python is most of it): ``decode_values`` is where the time is saved."""
    return _fast_or_wire(model, payload, values=False)


def decode_values(model: type[M], payload: bytes | bytearray | memoryview | str | None) -> Any:
    """Like ``decode``, but the fields as the fast decoder's Struct (attributes, and the model's
    properties such as ``is_billable``; ``wire.encode`` writes it as it writes the model) rather
    than the model's instance: for code that only reads fields. About half the time of
    ``decode`` for a LogRecord. What it defers is ``wire.decode``'s (an instance, or WireError)."""
    return _fast_or_wire(model, payload, values=True)


def _fast_or_wire(model: type[M], payload: bytes | bytearray | memoryview | str | None, *, values: bool) -> Any:
    """The fast decoder's instance (or values), else ``wire.decode``'s result or WireError."""
    if payload is not None:
        decoder = fast_decoder(model)
        if decoder is not None:
            value = decoder.values(payload) if values else decoder.fast(payload)
            if value is not None:
                return value
    return _wire_decode(model, payload)


def _wire_decode(model: type[M], payload: Any) -> M:
    from meterstream.schemas.wire import decode as wire_decode  # wire imports nothing from here

    return wire_decode(model, payload)


class _Builder:
    """The Struct of one model and the function from a decoded Struct to the result: the model's
    instance (``values=False``) or the Struct completed in place (``values=True``)."""

    def __init__(self, model: type[BaseModel], *, values: bool, omit: frozenset[str] = frozenset(),
                 ignore_unknown: bool = False) -> None:
        schema: Any = model.__pydantic_core_schema__  # a TypedDict union, read as plain dicts here
        # the top-level model's fields left out of the Struct, and unknown keys ignored whatever
        # its ``extra`` (values_decoder: a payload that is not yet the whole model)
        self.top, self.omit, self.ignore_unknown = model, omit, ignore_unknown
        self.definitions: dict[str, Any] = {}
        if schema.get("type") == "definitions":
            self.definitions = {d["ref"]: d for d in schema["definitions"]}
            schema = schema["schema"]
        self.values = values
        self.nul_free = False  # some text field's only pattern forbids NUL
        self.struct, self.convert = self._model(model, schema)

    def _resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while schema.get("type") == "definition-ref":
            try:
                schema = self.definitions[schema["schema_ref"]]
            except KeyError:
                raise FastPathUnavailable(f"unresolved reference {schema['schema_ref']}") from None
        return schema

    def _model(self, model: type[BaseModel], schema: dict[str, Any]) -> tuple[type[msgspec.Struct], Callable]:
        schema = self._resolve(schema)
        after: list[Callable[[Any], Any]] = []
        while schema.get("type") == "function-after":  # model validators (mode "after"), outermost first
            after.insert(0, _plain_function(schema, model.__name__))
            schema = self._resolve(schema["schema"])
        if schema.get("type") != "model" or schema.get("cls") is not model:
            raise FastPathUnavailable(f"{model.__name__}: a model validator that is not mode 'after', or not a model")
        if schema.get("custom_init") or schema.get("root_model") or schema.get("post_init"):
            raise FastPathUnavailable(f"{model.__name__}: a custom __init__, a root model or a post-init")
        if model.__pydantic_post_init__ is not None or model.__private_attributes__:
            raise FastPathUnavailable(f"{model.__name__}: private attributes or model_post_init")
        config = schema.get("config", {})
        if set(config) - _NEUTRAL_CONFIG:
            raise FastPathUnavailable(f"{model.__name__}: config {sorted(set(config) - _NEUTRAL_CONFIG)}")
        extra = config.get("extra_fields_behavior", "ignore")
        top = model is self.top
        if top and self.ignore_unknown:
            extra = "ignore"
        if extra not in ("forbid", "ignore"):
            raise FastPathUnavailable(f"{model.__name__}: extra={extra!r}")
        fields_schema = self._resolve(schema["schema"])
        if fields_schema.get("type") != "model-fields" or fields_schema.get("computed_fields") \
                or fields_schema.get("extras_schema") or "strict" in fields_schema:
            raise FastPathUnavailable(f"{model.__name__}: its fields are not plain model fields")
        if after and self.values:
            raise _NoValuesPath

        struct_fields: list[tuple[Any, ...]] = []
        template: dict[str, Any] = {}  # every field in model order: its default, or a placeholder
        posts: list[tuple[str, Callable[[Any], Any], Any]] = []  # (name, function, default or _UNSET)
        for name, field in fields_schema["fields"].items():
            if top and name in self.omit:
                continue
            if field.get("type") != "model-field" or field.get("validation_alias") is not None:
                raise FastPathUnavailable(f"{model.__name__}.{name}: an alias or a field kind not carried")
            value_schema = self._resolve(field["schema"])
            where = f"{model.__name__}.{name}"
            if value_schema.get("type") == "default":
                default = value_schema.get("default", _UNSET)
                if "default_factory" in value_schema or value_schema.get("validate_default") \
                        or not isinstance(default, _IMMUTABLE_DEFAULTS):
                    raise FastPathUnavailable(f"{where}: a default factory, a validated or a mutable default")
                annotation, post = self._value(self._resolve(value_schema["schema"]), where)
                if self.values and post is None:  # the default as it is: nothing runs on it
                    struct_fields.append((name, annotation, default))
                else:  # absent must be told from given: a function runs on given values only
                    struct_fields.append((name, annotation | msgspec.UnsetType, _UNSET))
                template[name] = default
            else:
                annotation, post = self._value(value_schema, where)
                struct_fields.append((name, annotation))
                template[name] = None  # always replaced: msgspec requires the field
                default = _UNSET
            if post is not None:
                posts.append((name, post, default))
        # the model's properties (is_billable) read the Struct's fields as they read the model's
        properties = {k: v for k, v in vars(model).items() if isinstance(v, property)} if self.values else {}
        kind = ("Part" if top and self.omit else "Values") if self.values else "Fast"
        struct = msgspec.defstruct(f"{model.__name__}{kind}", struct_fields,
                                   namespace=properties,
                                   kw_only=True, forbid_unknown_fields=extra == "forbid", module=__name__,
                                   gc=False)  # scalars and nested Structs only: no cycle to collect
        if tuple(struct.__struct_fields__) != tuple(template):
            raise FastPathUnavailable(f"{model.__name__}: the Struct's fields are not in the model's order")
        if self.values:
            return struct, _completer(posts)
        return struct, _converter(model, struct, template, posts, after)

    def _value(self, schema: dict[str, Any], where: str) -> tuple[Any, Callable[[Any], Any] | None]:
        """(msgspec annotation, function of a present value or None) of one field's schema."""
        schema = self._resolve(schema)
        kind = schema.get("type")
        if kind == "nullable":
            annotation, post = self._value(schema["schema"], where)
            return annotation | None, None if post is None else _Nullable(post)
        if kind == "function-after":
            function = _plain_function(schema, where)
            annotation, inner_post = self._value(schema["schema"], where)
            if inner_post is None:
                return annotation, function
            return annotation, lambda value: function(inner_post(value))
        if kind == "model":
            struct, convert = self._model(schema["cls"], schema)
            return struct, None if convert is _AS_DECODED else convert
        _only(schema, where)
        if kind == "int":
            meta = {k: schema[k] for k in _INT_BOUNDS if k in schema}
            return (Annotated[int, msgspec.Meta(**meta)] if meta else int), None
        if kind == "bool":
            return bool, None
        if kind == "str":
            meta = {k: schema[k] for k in ("min_length", "max_length") if k in schema}
            if "pattern" in schema:
                pattern = python_pattern(schema["pattern"], where)
                if pattern in _NUL_FREE_PATTERNS:
                    self.nul_free = True  # checked on the whole payload (_decode_then)
                else:
                    return (Annotated[str, msgspec.Meta(**meta)] if meta else str), \
                        _pattern_check(re.compile(pattern).search)
            return (Annotated[str, msgspec.Meta(**meta)] if meta else str), None
        if kind == "enum":
            cls = schema["cls"]
            if schema.get("missing") is not None or list(cls) != list(schema["members"]) \
                    or schema.get("sub_type") not in ("int", "str"):
                raise FastPathUnavailable(f"{where}: an enum with _missing_, a subset of members or other values")
            return cls, None
        if kind == "literal":
            expected = schema["expected"]
            if not (all(type(e) is str for e in expected) or all(type(e) is int for e in expected)):
                raise FastPathUnavailable(f"{where}: a literal of other than str or int values")
            return Literal[tuple(expected)], None
        raise FastPathUnavailable(f"{where}: a {kind} schema")


# keys of a leaf schema that change nothing msgspec's strict check does not already refuse:
# strict (msgspec is strict), ref and metadata (names and JSON schema only)
_LEAF_KEYS = {
    "int": {"type", "strict", "ref", "metadata", *_INT_BOUNDS},
    "bool": {"type", "strict", "ref", "metadata"},
    "str": {"type", "strict", "ref", "metadata", "min_length", "max_length", "pattern"},
    "enum": {"type", "strict", "ref", "metadata", "cls", "members", "sub_type", "missing"},
    "literal": {"type", "ref", "metadata", "expected"},
}


def _only(schema: dict[str, Any], where: str) -> None:
    allowed = _LEAF_KEYS.get(schema.get("type", ""))
    if allowed is None or set(schema) - allowed:
        extra = sorted(set(schema) - (allowed or set()))
        raise FastPathUnavailable(f"{where}: {schema.get('type')} schema with {extra}")


def _plain_function(schema: dict[str, Any], where: str) -> Callable[[Any], Any]:
    function = schema["function"]
    if function.get("type") != "no-info":
        raise FastPathUnavailable(f"{where}: a validator function that takes ValidationInfo")
    return function["function"]


class _Nullable:
    """The function of an optional field's value: not run on None (as pydantic's nullable)."""

    __slots__ = ("inner",)

    def __init__(self, inner: Callable[[Any], Any]) -> None:
        self.inner = inner

    def __call__(self, value: Any) -> Any:
        return None if value is None else self.inner(value)


def _call(post: Callable[[Any], Any], i: int, env: dict[str, Any], value: str) -> str:
    """The code that applies ``post`` to ``value`` (an optional's None check inline)."""
    if isinstance(post, _Nullable):
        env[f"p{i}"] = post.inner
        return f"(None if {value} is None else p{i}({value}))"
    env[f"p{i}"] = post
    return f"p{i}({value})"


def _as_decoded(decoded: Any) -> Any:
    return decoded


_AS_DECODED = _as_decoded  # a model with nothing to run on its values: the Struct as decoded


def _completer(posts: list[tuple[str, Callable[[Any], Any], Any]]) -> Callable[[Any], Any]:
    """Decoded Struct -> the same Struct holding the model's values: the field functions applied
    to given values, the defaults of the absent ones whose field has a function. Generated as
    straight-line code (half the time of a loop over the fields)."""
    if not posts:
        return _AS_DECODED
    env: dict[str, Any] = {"U": _UNSET}
    lines = ["def complete(s):"]
    for i, (name, post, default) in enumerate(posts):
        env[f"d{i}"] = default
        if default is _UNSET:  # required: always given
            lines += [f"    x = s.{name}", f"    s.{name} = {_call(post, i, env, 'x')}"]
        else:
            lines += [f"    x = s.{name}", "    if x is U:", f"        s.{name} = d{i}",
                      "    else:", f"        s.{name} = {_call(post, i, env, 'x')}"]
    lines.append("    return s")
    return _compiled(lines, env, "complete", [name for name, _, _ in posts])


def _converter(model: type[M], struct: type[msgspec.Struct], template: dict[str, Any],
               posts: list[tuple[str, Callable[[Any], Any], Any]],
               after: list[Callable[[Any], Any]]) -> Callable[[Any], M]:
    """Decoded Struct -> the model's instance, as pydantic builds it: fields in the model's order,
    defaults for the absent ones, ``model_fields_set`` the present ones, the field functions on
    present values, then the model validators. Generated as straight-line code for the usual
    value (every field given, as encode() writes them), a loop for the others."""
    names = tuple(struct.__struct_fields__)
    post_of = {name: post for name, post, _ in posts}
    defaulted = list(names[len(names) - len(struct.__struct_defaults__):]) if struct.__struct_defaults__ else []
    env: dict[str, Any] = {"U": _UNSET, "new": model.__new__, "M": model, "_set": _set, "ALL": frozenset(names),
                           "slow": _absent_fields_converter(model, names, template, posts, after)}
    lines = ["def to_model(s):"]
    lines += [f"    f{i} = s.{name}" for i, name in enumerate(names)]
    if defaulted:
        lines.append(f"    if U in ({', '.join(f'f{names.index(n)}' for n in defaulted)},):")
        lines.append("        return slow(s)")
    values = []
    for i, name in enumerate(names):
        if name in post_of:
            values.append(f"{name!r}: {_call(post_of[name], i, env, f'f{i}')}")
        else:
            values.append(f"{name!r}: f{i}")
    lines += ["    m = new(M)", f"    _set(m, '__dict__', {{{', '.join(values)}}})",
              "    _set(m, '__pydantic_fields_set__', set(ALL))", "    _set(m, '__pydantic_extra__', None)",
              "    _set(m, '__pydantic_private__', None)"]
    for i, function in enumerate(after):
        env[f"a{i}"] = function
        lines.append(f"    m = a{i}(m)")
    lines.append("    return m")
    return _compiled(lines, env, "to_model", list(names))


def _absent_fields_converter(model: type[M], names: tuple[str, ...], template: dict[str, Any],
                             posts: list[tuple[str, Callable[[Any], Any], Any]],
                             after: list[Callable[[Any], Any]]) -> Callable[[Any], M]:
    astuple = msgspec.structs.astuple
    new = model.__new__

    def to_model(decoded: Any) -> M:
        values = astuple(decoded)
        fields = dict(compress(zip(names, values, strict=True), map(is_not, values, repeat(_UNSET))))
        fields_set = set(fields)
        for name, post, _ in posts:
            if name in fields:
                fields[name] = post(fields[name])
        instance = new(model)
        _set(instance, "__dict__", {**template, **fields})
        _set(instance, "__pydantic_fields_set__", fields_set)
        _set(instance, "__pydantic_extra__", None)
        _set(instance, "__pydantic_private__", None)
        for function in after:
            instance = function(instance)
        return instance

    return to_model


def _compiled(lines: list[str], env: dict[str, Any], name: str, fields: list[str]) -> Callable[[Any], Any]:
    for field in fields:  # names go into the code as attribute names: identifiers only
        if not field.isidentifier() or keyword.iskeyword(field):
            raise FastPathUnavailable(f"field name {field!r} is not an identifier")
    exec("\n".join(lines), env)  # noqa: S102 - code built from the model's field names, checked above
    return env[name]


def _pattern_check(search: Callable[[str], Any]) -> Callable[[str], str]:
    """A pattern checked by a compiled regex after the decode: msgspec's own check costs 0.35 µs
    a field, this one 0.15; a value that matched recently is not searched again (0.05 µs: such
    fields, a configuration's version, repeat from message to message; bounded)."""
    matched: dict[str, None] = {}

    def check(value: str) -> str:
        if value in matched:
            return value
        if search(value) is None:
            raise _Defer
        if len(matched) >= _MATCHED_MAX:
            matched.clear()
        matched[value] = None
        return value

    return check


# ---- Rust regex (pydantic-core) -> Python re, where the two mean the same --------------------

_CLASS_ESCAPES = frozenset("\\]-^[")  # \x.. and these, escaped, inside a class
_PUNCT_ESCAPES = frozenset("\\.+*?()|[]{}^$-/")  # escaped punctuation outside a class: a literal


def python_pattern(pattern: str, where: str = "pattern") -> str:
    """``pattern`` (as pydantic-core's Rust regex reads it) in Python's syntax, or
    FastPathUnavailable when it holds anything whose meaning could differ between the two.

    Known subset: literals, escaped punctuation and ``\\xHH``, classes of single characters and
    ranges (no nested class, no set operation: Rust has them, Python reads them otherwise),
    groups without flags, ``|``, quantifiers, and the anchors ``^`` (start of the text in both)
    and ``$`` (the end of the text in Rust; Python's ``$`` also matches before a final newline,
    so it becomes ``\\Z``)."""
    out: list[str] = []
    i, n = 0, len(pattern)

    def refuse(why: str) -> FastPathUnavailable:
        return FastPathUnavailable(f"{where}: pattern {pattern!r}: {why}")

    def escape(j: int, allowed: frozenset[str]) -> tuple[str, int]:
        if j + 1 >= n:
            raise refuse("a trailing backslash")
        c = pattern[j + 1]
        if c == "x":
            digits = pattern[j + 2:j + 4]
            if len(digits) != 2 or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise refuse("an escape \\x not of two hex digits")
            return pattern[j:j + 4], j + 4
        if c in allowed:
            return "\\" + c, j + 2
        raise refuse(f"the escape \\{c}")

    while i < n:
        c = pattern[i]
        if c == "\\":
            text, i = escape(i, _PUNCT_ESCAPES)
            out.append(text)
        elif c == "$":
            out.append(r"\Z")
            i += 1
        elif c == "^":
            out.append(r"\A")
            i += 1
        elif c == "(":
            if pattern.startswith("(?", i):
                raise refuse("a group with flags or a name")
            out.append(c)
            i += 1
        elif c == "[":
            j = i + 1
            part = ["["]
            if j < n and pattern[j] == "^":
                part.append("^")
                j += 1
            if j < n and pattern[j] == "]":
                raise refuse("a class starting with ]")
            while True:
                if j >= n:
                    raise refuse("an unclosed class")
                d = pattern[j]
                if d == "]":
                    part.append("]")
                    j += 1
                    break
                if d == "\\":
                    text, j = escape(j, frozenset(_CLASS_ESCAPES))
                    part.append(text)
                elif d == "[" or pattern.startswith(("&&", "--", "~~"), j):
                    raise refuse("a nested class or a set operation")
                else:
                    part.append(d)
                    j += 1
            out.append("".join(part))
            i = j
        elif c in ".*+?{}|)" or c.isalnum() or c in " _-:,/@#%&=<>!'\"~;`":
            out.append(c)
            i += 1
        else:
            raise refuse(f"the character {c!r}")
    translated = "".join(out)
    re.compile(translated)
    return translated
