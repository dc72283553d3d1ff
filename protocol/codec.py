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


def _to_wire(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_wire(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        raise MalformedMessage("non-finite floats are not allowed on the wire")
    return value


def canonical_bytes(value: Any) -> bytes:
    """Canonical msgpack of a message body (or any wire value): sorted keys, float64."""
    packer = msgpack.Packer(use_bin_type=True, use_single_float=False, datetime=False)
    return bytes(packer.pack(_sort_maps(_to_wire(value))))


def _sort_maps(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sort_maps(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sort_maps(v) for v in value]
    return value


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
        raise MalformedMessage(f"not a msgpack frame: {exc}") from None
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


_HINTS_CACHE: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    if cls not in _HINTS_CACHE:
        _HINTS_CACHE[cls] = typing.get_type_hints(cls, include_extras=True)
    return _HINTS_CACHE[cls]


def _from_wire(value: Any, cls: type[T], path: str) -> T:
    if not isinstance(value, dict):
        raise MalformedMessage(f"{path}: expected a map")
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise MalformedMessage(f"{path}.{f.name}: missing")
            continue
        kwargs[f.name] = _convert(value[f.name], hints[f.name], _NO_BOUND, f"{path}.{f.name}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:  # __post_init__ checks of the message itself
        raise MalformedMessage(f"{path}: {exc}") from None


_NO_BOUND = Bound()


def _convert(value: Any, hint: Any, bound: Bound, path: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        base, *extras = typing.get_args(hint)
        found = [e for e in extras if isinstance(e, Bound)]
        return _convert(value, base, found[0] if found else bound, path)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _convert(value, inner, bound, path)
    if origin is tuple:
        inner, ellipsis = typing.get_args(hint)
        assert ellipsis is Ellipsis, "only tuple[X, ...] fields are supported"
        if not isinstance(value, list):
            raise MalformedMessage(f"{path}: expected a list")
        limit = bound.max_items or DEFAULT_MAX_ITEMS
        if len(value) > limit:
            raise MalformedMessage(f"{path}: {len(value)} items, limit {limit}")
        return tuple(_convert(v, inner, _NO_BOUND, f"{path}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return _from_wire(value, hint, path)  # type: ignore[arg-type]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            raise MalformedMessage(f"{path}: {value!r} is not one of {[m.value for m in hint]}") from None
    if hint is bool:
        if not isinstance(value, bool):
            raise MalformedMessage(f"{path}: expected a boolean")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise MalformedMessage(f"{path}: expected an integer")
        if not -MAX_INT <= value <= MAX_INT:
            raise MalformedMessage(f"{path}: integer out of range")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MalformedMessage(f"{path}: expected a number")
        if not math.isfinite(value):
            raise MalformedMessage(f"{path}: must be finite")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise MalformedMessage(f"{path}: expected a string")
        limit = bound.max_len or DEFAULT_MAX_STR
        if len(value) > limit:
            raise MalformedMessage(f"{path}: {len(value)} characters, limit {limit}")
        return value
    if hint is bytes:
        if not isinstance(value, bytes):
            raise MalformedMessage(f"{path}: expected bytes")
        limit = bound.max_len or DEFAULT_MAX_BYTES
        if len(value) > limit:
            raise MalformedMessage(f"{path}: {len(value)} bytes, limit {limit}")
        return value
    raise TypeError(f"{path}: unsupported field type {hint!r}")
