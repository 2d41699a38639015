"""Proto3 JSON mapping, compiled per message type: the fast path the gateway uses.

`json_format` walks descriptors and re-derives every decision on every call. Here each message
type gets a plan once (per field: JSON name, kind, converter) and conversion is a loop over
`ListFields()` (encode) or over the JSON object's keys (decode). The output is the same as
`json_format.MessageToDict(msg)` / `ParseDict(obj, msg)` (tests/unit/gateway/test_codec.py
proves it on every field shape); the few types with free-form JSON (Any, Struct, Value,
ListValue) are handed to json_format itself.

Decoding reports every problem as a FieldViolation with a dotted snake_case path
("everything.inner.count"), so the client learns which field is wrong, not just that one is.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from mesh.errors import FieldViolation

F = FieldDescriptor

INT64_TYPES = {F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64}
UINT64_TYPES = {F.TYPE_UINT64, F.TYPE_FIXED64}
INT32_TYPES = {F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32}
UINT32_TYPES = {F.TYPE_UINT32, F.TYPE_FIXED32}
FLOAT_TYPES = {F.TYPE_FLOAT, F.TYPE_DOUBLE}
INT_RANGES = {
    **{t: (-(2**63), 2**63 - 1) for t in INT64_TYPES},
    **{t: (0, 2**64 - 1) for t in UINT64_TYPES},
    **{t: (-(2**31), 2**31 - 1) for t in INT32_TYPES},
    **{t: (0, 2**32 - 1) for t in UINT32_TYPES},
}
WRAPPERS = {
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
}
FREEFORM = {"google.protobuf.Any", "google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
TIMESTAMP = "google.protobuf.Timestamp"
DURATION = "google.protobuf.Duration"
FIELD_MASK = "google.protobuf.FieldMask"
EMPTY = "google.protobuf.Empty"

_TS_MIN = -62135596800  # 0001-01-01T00:00:00Z
_TS_MAX = 253402300799  # 9999-12-31T23:59:59Z
_DURATION_MAX = 315576000000
_TS_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$"
)
# The platform stores text in PostgreSQL, which cannot hold U+0000: the edge refuses it in every
# string (the OpenAPI says so with NO_NUL_PATTERN on strings that have no pattern of their own).
NUL_TEXT = "must not contain NUL (U+0000) characters"
NO_NUL_PATTERN = "^[^\\u0000]*$"
_INT_TEXT = re.compile(r"^-?[0-9]+$")
_DURATION_RE = re.compile(r"^(-)?(\d+)(?:\.(\d{1,9}))?s$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)
MAX_DEPTH = 64  # protobuf refuses to parse messages nested deeper than 100


class JsonError(Exception):
    """The JSON does not fit the message; .violations say where and why."""

    def __init__(self, violations: list[FieldViolation]):
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))
        self.violations = violations


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _nanos_text(nanos: int) -> str:
    if nanos == 0:
        return ""
    if nanos % 1_000_000 == 0:
        return f".{nanos // 1_000_000:03d}"
    if nanos % 1_000 == 0:
        return f".{nanos // 1_000:06d}"
    return f".{nanos:09d}"


def _double_out(value: float) -> Any:
    if value - value == 0.0:  # finite (inf - inf and nan - nan are nan)
        return value
    return _float_out(value, False)


def _float_out(value: float, is_float32: bool) -> Any:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if is_float32:
        return json_format.type_checkers.ToShortestFloat(value)
    return value


def timestamp_to_json(seconds: int, nanos: int) -> str:
    if not (_TS_MIN <= seconds <= _TS_MAX) or not (0 <= nanos < 1_000_000_000):
        raise ValueError("timestamp out of range")
    # datetime's C arithmetic; isoformat() pads the year to four digits and, with no
    # microseconds, stops at the seconds
    text = (_NAIVE_EPOCH + timedelta(seconds=seconds)).isoformat()
    return f"{text}{_nanos_text(nanos)}Z"


def duration_to_json(seconds: int, nanos: int) -> str:
    if (seconds < 0 < nanos) or (nanos < 0 < seconds) or abs(seconds) > _DURATION_MAX:
        raise ValueError("duration out of range")
    sign = "-" if seconds < 0 or nanos < 0 else ""
    return f"{sign}{abs(seconds)}{_nanos_text(abs(nanos))}s"


def parse_timestamp(text: str) -> tuple[int, int]:
    m = _TS_RE.match(text)
    if not m:
        raise ValueError('expected an RFC 3339 timestamp such as "2026-01-31T12:00:00Z"')
    year, month, day, hh, mi, ss, frac, zone = m.groups()
    try:
        dt = datetime(int(year), int(month), int(day), int(hh), int(mi), int(ss), tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"invalid date or time: {exc}") from None
    seconds = int((dt - _EPOCH).total_seconds())
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        off_h, off_m = int(zone[1:3]), int(zone[4:6])
        if off_h > 23 or off_m > 59:
            raise ValueError(f"invalid UTC offset {zone}: hours 00-23, minutes 00-59")
        seconds -= sign * (off_h * 3600 + off_m * 60)
    nanos = int((frac or "").ljust(9, "0")) if frac else 0
    if not (_TS_MIN <= seconds <= _TS_MAX):
        raise ValueError("timestamp out of range (years 0001 to 9999)")
    return seconds, nanos


def parse_duration(text: str) -> tuple[int, int]:
    m = _DURATION_RE.match(text)
    if not m:
        raise ValueError('expected a duration in seconds such as "1.5s"')
    neg, whole, frac = m.groups()
    seconds = int(whole)
    nanos = int(frac.ljust(9, "0")) if frac else 0
    if seconds > _DURATION_MAX:
        raise ValueError("duration out of range")
    if neg:
        seconds, nanos = -seconds, -nanos
    return seconds, nanos


def camel_to_snake(name: str) -> str:
    out = []
    for ch in name:
        if ch.isupper():
            out.append("_")
            out.append(ch.lower())
        else:
            out.append(ch)
    return "".join(out)


def snake_to_camel(name: str) -> str:
    parts = name.split("_")
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


# ------------------------------------------------------------------------------------------
# Encoding: message -> JSON-ready Python objects


class Encoder:
    """Message -> dict, exactly as json_format.MessageToDict with default options.

    Each message type is compiled once into one function (its fields' JSON names and value
    converters bound in a plan), so encoding a nested message costs one dict lookup per field
    and no per-message type dispatch."""

    def __init__(self) -> None:
        self._plans: dict[str, dict[str, tuple[str, Callable[[Any], Any]]]] = {}
        self._fns: dict[str, Callable[[Message], Any]] = {}
        self._special: dict[str, Callable[[Message], Any]] = {
            TIMESTAMP: lambda m: timestamp_to_json(m.seconds, m.nanos),
            DURATION: lambda m: duration_to_json(m.seconds, m.nanos),
            FIELD_MASK: lambda m: ",".join(_mask_path_out(p) for p in m.paths),
            EMPTY: lambda m: {},
        }

    def encode(self, msg: Message) -> Any:
        d = msg.DESCRIPTOR
        fn = self._fns.get(d.full_name)
        if fn is None:
            fn = self._message_fn(d)
        return fn(msg)

    def _message_fn(self, d: Descriptor) -> Callable[[Message], Any]:
        full = d.full_name
        fn = self._fns.get(full)
        if fn is not None:
            return fn
        special = self._special.get(full)
        if special is not None:
            fn = special
        elif full in WRAPPERS:
            value_fn = self._scalar_fn(d.fields_by_name["value"])
            fn = lambda m: value_fn(m.value)  # noqa: E731
        elif full in FREEFORM:
            fn = json_format.MessageToDict
        else:
            plan: dict[str, tuple[str, Callable[[Any], Any]]] = {}
            get = plan.get
            to_dict = json_format.MessageToDict

            def fn(msg: Message) -> Any:
                out: dict[str, Any] = {}
                for fd, value in msg.ListFields():
                    entry = get(fd.name)
                    if entry is None:  # an extension: json_format writes "[full.name]"
                        return to_dict(msg)
                    out[entry[0]] = entry[1](value)
                return out

            # registered before the fields are planned: recursive messages find it
            self._fns[full] = fn
            self._plans[full] = plan
            for fd in d.fields:
                plan[fd.name] = (fd.json_name, self._field_fn(fd))
            return fn
        self._fns[full] = fn
        return fn

    def _plan(self, d: Descriptor) -> dict[str, tuple[str, Callable[[Any], Any]]]:
        self._message_fn(d)
        return self._plans[d.full_name]

    def _field_fn(self, fd: FieldDescriptor) -> Callable[[Any], Any]:
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            key_fd = fd.message_type.fields_by_name["key"]
            val_fd = fd.message_type.fields_by_name["value"]
            val_fn = self._single_fn(val_fd)
            if key_fd.type == F.TYPE_BOOL:
                return lambda m: {("true" if k else "false"): val_fn(v) for k, v in m.items()}
            return lambda m: {str(k): val_fn(v) for k, v in m.items()}
        one = self._single_fn(fd)
        if fd.is_repeated:
            return lambda values: [one(v) for v in values]
        return one

    def _single_fn(self, fd: FieldDescriptor) -> Callable[[Any], Any]:
        if fd.type == F.TYPE_MESSAGE or fd.type == F.TYPE_GROUP:
            return self._message_fn(fd.message_type)
        return self._scalar_fn(fd)

    def _scalar_fn(self, fd: FieldDescriptor) -> Callable[[Any], Any]:
        t = fd.type
        if t in INT64_TYPES or t in UINT64_TYPES:
            return str
        if t == F.TYPE_FLOAT:
            return lambda v: _float_out(v, True)
        if t == F.TYPE_DOUBLE:
            return _double_out
        if t == F.TYPE_BYTES:
            return lambda v: base64.b64encode(v).decode("ascii")
        if t == F.TYPE_ENUM:
            return _enum_out(fd.enum_type)
        return _identity


def _identity(v: Any) -> Any:
    return v


def _enum_out(ed: EnumDescriptor) -> Callable[[int], Any]:
    if ed.full_name == "google.protobuf.NullValue":
        return lambda v: None
    names = {v.number: v.name for v in reversed(ed.values)}  # first name wins for aliases
    return lambda v: names.get(v, v)


def _mask_path_out(path: str) -> str:
    return ".".join(snake_to_camel(p) for p in path.split("."))


# ------------------------------------------------------------------------------------------
# Decoding: JSON-ready Python objects -> message


class _FieldPlan:
    __slots__ = ("fd", "name", "kind", "setter")

    def __init__(self, fd: FieldDescriptor, kind: str):
        self.fd = fd
        self.name = fd.name
        self.kind = kind  # "scalar", "message", "repeated", "map"


class Decoder:
    """dict -> message, with the same acceptance as json_format.ParseDict and precise errors."""

    def __init__(self, *, ignore_unknown: bool = False):
        self.ignore_unknown = ignore_unknown
        self._plans: dict[str, dict[str, _FieldPlan]] = {}

    def decode(self, obj: Any, msg: Message, path: str = "") -> list[str]:
        """Merge obj into msg; returns the JSON keys (proto names) present at the top level.

        Raises JsonError listing every violation found.
        """
        errors: list[FieldViolation] = []
        keys = self._merge(obj, msg, path, errors)
        if errors:
            raise JsonError(errors)
        return keys

    def plan(self, d: Descriptor) -> dict[str, _FieldPlan]:
        plan = self._plans.get(d.full_name)
        if plan is not None:
            return plan
        plan = {}
        for fd in d.fields:
            if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
                kind = "map"
            elif fd.is_repeated:
                kind = "repeated"
            elif fd.type == F.TYPE_MESSAGE:
                kind = "message"
            else:
                kind = "scalar"
            fp = _FieldPlan(fd, kind)
            plan[fd.json_name] = fp
            plan[fd.name] = fp
        self._plans[d.full_name] = plan
        return plan

    def _merge(self, obj: Any, msg: Message, path: str, errors: list[FieldViolation], depth: int = 0) -> list[str]:
        if depth > MAX_DEPTH:
            errors.append(FieldViolation(path or "body", f"nested deeper than {MAX_DEPTH} messages"))
            return []
        d = msg.DESCRIPTOR
        full = d.full_name
        if full in FREEFORM or full in WRAPPERS or full in (TIMESTAMP, DURATION, FIELD_MASK):
            self._special(obj, msg, path, errors)
            return []
        if not isinstance(obj, dict):
            errors.append(FieldViolation(path or "body", f"expected a JSON object, got {_kind(obj)}"))
            return []
        plan = self.plan(d)
        seen: list[str] = []
        oneofs: dict[str, str] = {}
        for key, value in obj.items():
            fp = plan.get(key)
            if fp is None:
                if not self.ignore_unknown:
                    errors.append(FieldViolation(_join(path, key), f"unknown field {key!r} in {full}"))
                continue
            fd = fp.fd
            fpath = _join(path, fd.name)
            if fd.name in seen:
                errors.append(FieldViolation(fpath, "field given twice (both JSON and proto names)"))
                continue
            seen.append(fd.name)
            if value is None and not (fd.message_type is not None and fd.message_type.full_name == "google.protobuf.Value"):
                continue  # null means "not set"
            if fd.containing_oneof is not None and not fd.containing_oneof.name.startswith("_"):
                other = oneofs.get(fd.containing_oneof.name)
                if other is not None:
                    errors.append(FieldViolation(fpath, f"only one of oneof {fd.containing_oneof.name} may be set ({other} is)"))
                    continue
                oneofs[fd.containing_oneof.name] = fd.name
            kind = fp.kind
            if kind == "scalar":
                try:
                    setattr(msg, fd.name, _scalar_in(fd, value))
                except ValueError as exc:
                    errors.append(FieldViolation(fpath, str(exc)))
            elif kind == "message":
                sub = getattr(msg, fd.name)
                n = len(errors)
                self._merge(value, sub, fpath, errors, depth + 1)
                if len(errors) == n:
                    sub.SetInParent()
            elif kind == "repeated":
                if not isinstance(value, list):
                    errors.append(FieldViolation(fpath, f"expected a JSON array, got {_kind(value)}"))
                    continue
                target = getattr(msg, fd.name)
                for i, item in enumerate(value):
                    ipath = f"{fpath}[{i}]"
                    if item is None:
                        errors.append(FieldViolation(ipath, "null is not allowed in an array"))
                    elif fd.type == F.TYPE_MESSAGE:
                        self._merge(item, target.add(), ipath, errors, depth + 1)
                    else:
                        try:
                            target.append(_scalar_in(fd, item))
                        except ValueError as exc:
                            errors.append(FieldViolation(ipath, str(exc)))
            else:  # map
                if not isinstance(value, dict):
                    errors.append(FieldViolation(fpath, f"expected a JSON object, got {_kind(value)}"))
                    continue
                key_fd = fd.message_type.fields_by_name["key"]
                val_fd = fd.message_type.fields_by_name["value"]
                target = getattr(msg, fd.name)
                for k, v in value.items():
                    kpath = f"{fpath}[{k}]"
                    try:
                        mk = _map_key_in(key_fd, k)
                    except ValueError as exc:
                        errors.append(FieldViolation(kpath, f"bad key: {exc}"))
                        continue
                    if v is None:
                        errors.append(FieldViolation(kpath, "null is not allowed as a map value"))
                    elif val_fd.type == F.TYPE_MESSAGE:
                        self._merge(v, target[mk], kpath, errors, depth + 1)
                    else:
                        try:
                            target[mk] = _scalar_in(val_fd, v)
                        except ValueError as exc:
                            errors.append(FieldViolation(kpath, str(exc)))
        return seen

    def _special(self, obj: Any, msg: Message, path: str, errors: list[FieldViolation]) -> None:
        full = msg.DESCRIPTOR.full_name
        where = path or "body"
        try:
            if full == TIMESTAMP:
                if not isinstance(obj, str):
                    raise ValueError(f"expected an RFC 3339 timestamp string, got {_kind(obj)}")
                msg.seconds, msg.nanos = parse_timestamp(obj)
            elif full == DURATION:
                if not isinstance(obj, str):
                    raise ValueError(f'expected a duration string such as "1.5s", got {_kind(obj)}')
                msg.seconds, msg.nanos = parse_duration(obj)
            elif full == FIELD_MASK:
                if not isinstance(obj, str):
                    raise ValueError(f'expected a comma-separated string such as "name,power.solarKwp", got {_kind(obj)}')
                msg.paths.extend(parse_field_mask(obj))
            elif full in WRAPPERS:
                msg.value = _scalar_in(msg.DESCRIPTOR.fields_by_name["value"], obj)
            else:
                json_format.ParseDict(obj, msg, ignore_unknown_fields=self.ignore_unknown)
        except (ValueError, json_format.ParseError) as exc:  # ParseError is not a ValueError
            errors.append(FieldViolation(where, str(exc)))


def parse_field_mask(text: str) -> list[str]:
    paths = []
    for raw in text.split(","):
        raw = raw.strip()
        if not raw:
            continue
        if "_" in raw and any(c.isupper() for c in raw):
            raise ValueError(f"field mask path {raw!r} mixes snake_case and camelCase")
        paths.append(".".join(camel_to_snake(p) for p in raw.split(".")))
    return paths


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _scalar_in(fd: FieldDescriptor, value: Any) -> Any:
    t = fd.type
    if t == F.TYPE_STRING:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {_kind(value)}")
        if "\x00" in value:
            raise ValueError(NUL_TEXT)
        return value
    if t in INT_RANGES:
        return _int_in(t, value)
    if t in FLOAT_TYPES:
        return _float_in(t, value)
    if t == F.TYPE_BOOL:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_kind(value)}")
        return value
    if t == F.TYPE_ENUM:
        return _enum_in(fd.enum_type, value)
    if t == F.TYPE_BYTES:
        if not isinstance(value, str):
            raise ValueError(f"expected a base64 string, got {_kind(value)}")
        return _b64_in(value)
    raise ValueError(f"unsupported field type {t}")


def _int_in(t: int, value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer, got a boolean")
    if isinstance(value, int):
        n = value
    elif isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"expected an integer, got {value!r}")
        n = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if text != value or not text:
            raise ValueError(f"expected an integer, got {value!r}")
        # decimal digits only: "1e3", "1.0", "0x10" or "1_000" are not integers in a string
        if not _INT_TEXT.match(text):
            raise ValueError(f"expected an integer in decimal digits, got {value!r}")
        n = int(text)
    else:
        raise ValueError(f"expected an integer, got {_kind(value)}")
    lo, hi = INT_RANGES[t]
    if not lo <= n <= hi:
        raise ValueError(f"integer {n} out of range [{lo}, {hi}]")
    return n


_FLOAT32_MAX = 3.4028235677973366e38  # beyond this a double rounds to float32 infinity


def _float_in(t: int, value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    if isinstance(value, (int, float)):
        f = float(value)
    elif isinstance(value, str):
        if value == "NaN":
            return math.nan
        if value == "Infinity":
            return math.inf
        if value == "-Infinity":
            return -math.inf
        try:
            f = float(value)
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
        if math.isnan(f) or math.isinf(f):
            raise ValueError(f'expected a number, "NaN", "Infinity" or "-Infinity", got {value!r}')
    else:
        raise ValueError(f"expected a number, got {_kind(value)}")
    if t == F.TYPE_FLOAT and math.isfinite(f) and abs(f) >= _FLOAT32_MAX:
        raise ValueError(f"number {value!r} out of float range")
    if math.isinf(f):
        raise ValueError(f"number {value!r} out of range")
    return f


def _enum_in(ed: EnumDescriptor, value: Any) -> int:
    if ed.full_name == "google.protobuf.NullValue":
        return 0
    if isinstance(value, str):
        v = ed.values_by_name.get(value)
        if v is None:
            allowed = ", ".join(x.name for x in ed.values)
            raise ValueError(f"unknown {ed.name} value {value!r}; expected one of {allowed}")
        return v.number
    if isinstance(value, int) and not isinstance(value, bool):
        if not -(2**31) <= value < 2**31:
            raise ValueError(f"enum number {value} out of range")
        return value  # proto3 enums are open: unknown numbers are kept
    raise ValueError(f"expected an enum name string, got {_kind(value)}")


def _b64_in(text: str) -> bytes:
    s = text.replace("-", "+").replace("_", "/")
    s += "=" * (-len(s) % 4)
    try:
        return base64.b64decode(s, validate=True)
    except ValueError:
        raise ValueError("invalid base64") from None


def _map_key_in(fd: FieldDescriptor, key: str) -> Any:
    t = fd.type
    if t == F.TYPE_STRING:
        if "\x00" in key:
            raise ValueError(NUL_TEXT)
        return key
    if t == F.TYPE_BOOL:
        if key == "true":
            return True
        if key == "false":
            return False
        raise ValueError(f"expected true or false, got {key!r}")
    return _int_in(t, key)


def scalar_from_text(fd: FieldDescriptor, text: str) -> Any:
    """A path or query parameter's text as the field's value (or the WKT message's JSON)."""
    t = fd.type
    if t == F.TYPE_STRING:
        if "\x00" in text:
            raise ValueError(NUL_TEXT)
        return text
    if t == F.TYPE_BOOL:
        low = text.lower()
        if low in ("true", "1"):
            return True
        if low in ("false", "0"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if t in FLOAT_TYPES:
        return _float_in(t, text)
    if t == F.TYPE_ENUM:
        if text.lstrip("-").isdigit():
            return _enum_in(fd.enum_type, int(text))
        return _enum_in(fd.enum_type, text)
    return _scalar_in(fd, text)


ENCODER = Encoder()


def to_json_obj(msg: Message) -> Any:
    """A message as JSON-ready Python objects (proto3 JSON mapping, lowerCamelCase names)."""
    try:
        return ENCODER.encode(msg)
    except ValueError:
        # out-of-range Timestamp/Duration: json_format raises too; let the caller map it to 500
        raise
