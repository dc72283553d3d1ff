"""Wire codec: frozen dataclasses <-> bounded, versioned msgpack frames.

A frame is the msgpack array ``[protocol_version, type_tag, body]`` where
``body`` is a map from field name to value. Decoding is driven by the
dataclass's type hints and is strict about types and sizes; unknown fields
are ignored (so newer peers can add fields) while unknown type tags are
rejected. Encoding is canonical: map keys sorted, floats always float64, so
the same message always yields the same bytes (job ids and signatures rely on it).

Register a message type with :func:`message`; bound a field with
``Annotated[str, Bound(max_len=...)]`` (characters, bytes) or
``Annotated[tuple[X, ...], Bound(max_items=...)]``.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import msgpack

from .errors import MalformedMessage, OversizedMessage, UnknownMessageType, UnsupportedVersion

PROTOCOL_VERSION = 1

DEFAULT_MAX_STR = 256  # characters, for str fields without an explicit bound
DEFAULT_MAX_BYTES = 1024  # bytes, for bytes fields without an explicit bound
DEFAULT_MAX_ITEMS = 64  # elements, for tuple fields without an explicit bound
MAX_INT = 2**63 - 1

T = TypeVar("T")
ClassT = TypeVar("ClassT", bound=type[Any])

_REGISTRY: dict[str, type[Any]] = {}
_MAX_FRAME: dict[type[Any], int] = {}
_TAGS: dict[type[Any], str] = {}


def message(tag: str, *, max_bytes: int) -> Callable[[ClassT], ClassT]:
    """Register a frozen dataclass as a wire message with a type tag and a size bound."""

    def register(cls: ClassT) -> ClassT:
        if not dataclasses.is_dataclass(cls) or not vars(cls)["__dataclass_params__"].frozen:
            raise TypeError(f"{cls.__name__} must be a frozen dataclass")
        if tag in _REGISTRY:
            raise TypeError(f"message tag {tag!r} registered twice")
        _REGISTRY[tag] = cls
        _TAGS[cls] = tag
        _MAX_FRAME[cls] = max_bytes
        return cls

    return register


@dataclasses.dataclass(frozen=True)
class Bound:
    """Size bound for a field: ``max_len`` characters/bytes, ``max_items`` tuple elements."""

    max_len: int | None = None
    max_items: int | None = None


def tag_of(cls: type[Any]) -> str:
    return _TAGS[cls]


def max_frame_bytes(cls: type[Any]) -> int:
    return _MAX_FRAME[cls]


# ---------------------------------------------------------------- encoding


_PLAIN = frozenset({str, int, bytes, bool, type(None)})  # exact types that go on the wire as they are
_SORTED_FIELDS: dict[type[Any], tuple[str, ...]] = {}  # per dataclass, its field names in wire order


def _canonical(value: Any) -> Any:
    """``value`` as plain msgpack data, every map's keys sorted: what canonical msgpack packs.

    One pass, with each dataclass's sorted field names computed once: a job costs a few hundred
    of these calls per message, and this runs on the event loop.
    """
    cls = type(value)
    if cls in _PLAIN:
        return value
    names = _SORTED_FIELDS.get(cls)
    if names is None and dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = _SORTED_FIELDS[cls] = tuple(sorted(f.name for f in dataclasses.fields(value)))
    if names is not None:
        return {name: _canonical(getattr(value, name)) for name in names}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {k: _canonical(value[k]) for k in sorted(value)}
    if isinstance(value, float) and not math.isfinite(value):
        raise MalformedMessage("non-finite floats are not allowed on the wire")
    return value


def canonical_bytes(value: Any) -> bytes:
    """Canonical msgpack of a message body (or any wire value): sorted keys, float64."""
    packer = msgpack.Packer(use_bin_type=True, use_single_float=False, datetime=False)
    return bytes(packer.pack(_canonical(value)))


def encode(msg: Any) -> bytes:
    """Encode a registered message as a frame; refuses to build an oversized one."""
    cls = type(msg)
    if cls not in _TAGS:
        raise TypeError(f"{cls.__name__} is not a registered message type")
    frame = canonical_bytes([PROTOCOL_VERSION, _TAGS[cls], msg])
    if len(frame) > _MAX_FRAME[cls]:
        raise OversizedMessage(f"{_TAGS[cls]} frame is {len(frame)} bytes, limit {_MAX_FRAME[cls]}")
    return frame


# ---------------------------------------------------------------- decoding


def decode(data: bytes, expected: type[T]) -> T:
    """Decode a frame that must hold a message of type ``expected``."""
    if len(data) > _MAX_FRAME[expected]:
        raise OversizedMessage(f"{_TAGS[expected]} frame is {len(data)} bytes, limit {_MAX_FRAME[expected]}")
    version, tag, body = _unpack_frame(data)
    if tag not in _REGISTRY:
        raise UnknownMessageType(f"unknown message type {tag!r}")
    if _REGISTRY[tag] is not expected:
        raise MalformedMessage(f"expected a {_TAGS[expected]} message, got {tag!r}")
    del version
    return _from_wire(body, expected, tag)


def decode_any(data: bytes, max_bytes: int) -> Any:
    """Decode a frame of any registered type (for multiplexed streams)."""
    if len(data) > max_bytes:
        raise OversizedMessage(f"frame is {len(data)} bytes, limit {max_bytes}")
    _, tag, body = _unpack_frame(data)
    cls = _REGISTRY.get(tag)
    if cls is None:
        raise UnknownMessageType(f"unknown message type {tag!r}")
    if len(data) > _MAX_FRAME[cls]:
        raise OversizedMessage(f"{tag} frame is {len(data)} bytes, limit {_MAX_FRAME[cls]}")
    return _from_wire(body, cls, tag)


def _unpack_frame(data: bytes) -> tuple[int, str, Any]:
    try:
        frame = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            timestamp=0,
        )
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        # msgpack's FormatError (a reserved byte such as 0xc1) carries no text: name its kind then
        raise MalformedMessage(f"not a msgpack frame: {str(exc) or type(exc).__name__} ({len(data)} bytes)") from None
    if not (isinstance(frame, list) and len(frame) == 3):
        raise MalformedMessage("a frame is [version, type, body]")
    version, tag, body = frame
    if not isinstance(version, int) or isinstance(version, bool):
        raise MalformedMessage("frame version must be an integer")
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersion(f"protocol version {version} (this node speaks {PROTOCOL_VERSION})")
    if not isinstance(tag, str):
        raise MalformedMessage("frame type must be a string")
    return version, tag, body


Converter = Callable[[Any], Any]
_NO_BOUND = Bound()
_CONVERTERS: dict[tuple[Any, Bound], Converter] = {}


class _FieldError(Exception):
    """A conversion failure below the top level; the path is prefixed on the way up."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason

    def under(self, name: str) -> _FieldError:
        return _FieldError(f"{name}.{self.path}" if self.path else name, self.reason)


def _from_wire(value: Any, cls: type[T], tag: str) -> T:
    try:
        result: T = _converter(cls, _NO_BOUND)(value)
    except _FieldError as exc:
        raise MalformedMessage(f"{tag}.{exc}") from None
    return result


def _converter(hint: Any, bound: Bound) -> Converter:
    """A checking converter for ``hint``, built once per (type, bound) and cached.

    Decoding is on the gossip hot path (every advert, on every node), so the
    type hints are interpreted here, once, not per message.
    """
    key = (hint, bound)
    if key not in _CONVERTERS:
        _CONVERTERS[key] = _build_converter(hint, bound)
    return _CONVERTERS[key]


def _fail(reason: str) -> typing.NoReturn:
    raise _FieldError("", reason)


def _build_converter(hint: Any, bound: Bound) -> Converter:
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        base, *extras = typing.get_args(hint)
        found = [e for e in extras if isinstance(e, Bound)]
        return _converter(base, found[0] if found else bound)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        (inner_hint,) = [o for o in options if o is not type(None)]
        inner_optional = _converter(inner_hint, bound)
        return lambda v: None if v is None else inner_optional(v)
    if origin is tuple:
        inner_hint, ellipsis = typing.get_args(hint)
        assert ellipsis is Ellipsis, "only tuple[X, ...] fields are supported"
        inner = _converter(inner_hint, _NO_BOUND)
        max_items = bound.max_items or DEFAULT_MAX_ITEMS

        def convert_tuple(v: Any) -> tuple[Any, ...]:
            if not isinstance(v, list):
                _fail("expected a list")
            if len(v) > max_items:
                _fail(f"{len(v)} items, limit {max_items}")
            out = []
            for i, item in enumerate(v):
                try:
                    out.append(inner(item))
                except _FieldError as exc:
                    raise exc.under(f"[{i}]") from None
            return tuple(out)

        return convert_tuple
    if dataclasses.is_dataclass(hint):
        return _dataclass_converter(hint)  # type: ignore[arg-type]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        enum_type = hint

        def convert_enum(v: Any) -> Any:
            try:
                return enum_type(v)
            except ValueError:
                _fail(f"{v!r} is not one of {[m.value for m in enum_type]}")

        return convert_enum
    if hint is bool:

        def convert_bool(v: Any) -> bool:
            if not isinstance(v, bool):
                _fail("expected a boolean")
            return v

        return convert_bool
    if hint is int:

        def convert_int(v: Any) -> int:
            if type(v) is not int:
                _fail("expected an integer")
            if not -MAX_INT <= v <= MAX_INT:
                _fail("integer out of range")
            return v

        return convert_int
    if hint is float:

        def convert_float(v: Any) -> float:
            if type(v) is not float and type(v) is not int:
                _fail("expected a number")
            if not math.isfinite(v):
                _fail("must be finite")
            return float(v)

        return convert_float
    if hint is str or hint is bytes:
        wire_type = hint
        max_len = bound.max_len or (DEFAULT_MAX_STR if hint is str else DEFAULT_MAX_BYTES)
        unit = "characters" if hint is str else "bytes"

        def convert_text(v: Any) -> Any:
            if type(v) is not wire_type:
                _fail(f"expected {'a string' if wire_type is str else 'bytes'}")
            if len(v) > max_len:
                _fail(f"{len(v)} {unit}, limit {max_len}")
            return v

        return convert_text
    raise TypeError(f"unsupported field type {hint!r}")


def _dataclass_converter(cls: type[Any]) -> Converter:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = [
        (
            f.name,
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            _LazyConverter(hints[f.name]),
        )
        for f in dataclasses.fields(cls)
    ]

    def convert_dataclass(v: Any) -> Any:
        if not isinstance(v, dict):
            _fail("expected a map")
        kwargs = {}
        for name, required, convert in fields:
            if name in v:
                try:
                    kwargs[name] = convert(v[name])
                except _FieldError as exc:
                    raise exc.under(name) from None
            elif required:
                raise _FieldError(name, "missing")
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as exc:  # __post_init__ checks of the message itself
            _fail(str(exc))

    return convert_dataclass


class _LazyConverter:
    """Resolves a field's converter on first use, so self-referencing types cannot recurse at build time."""

    __slots__ = ("_convert", "_hint")

    def __init__(self, hint: Any) -> None:
        self._hint = hint
        self._convert: Converter | None = None

    def __call__(self, v: Any) -> Any:
        if self._convert is None:
            self._convert = _converter(self._hint, _NO_BOUND)
        return self._convert(v)
