"""Declarative request validation from the towerco.validate.v1 field options.

Rules are compiled once per message type into a list of small checks, so validating a message
whose type has no rules at all costs one dict lookup. Paths are dotted snake_case field names
with [i] indexes for repeated fields and [key] for map values, e.g. "site.location.latitude" or
"samples[3].metric".

Besides the per-field rules: `mask_paths` on a FieldMask field (only those paths, or "*"), and
the message-level `(towerco.validate.v1.message).ordered` pairs (e.g. a TimeRange's end after its
start), checked when both fields are set. The gateway's OpenAPI states the same rules.

google.api.field_behavior REQUIRED is documentation only and is NOT enforced here: output-only
fields and update masks make it unsafe. Use (towerco.validate.v1.field).required.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from towerco.validate.v1 import validate_pb2

from mesh.errors import FieldViolation, InvalidArgument

_EXT = validate_pb2.field
_MSG_EXT = validate_pb2.message
_T = FieldDescriptor
_NUMERIC = {
    _T.TYPE_DOUBLE,
    _T.TYPE_FLOAT,
    _T.TYPE_INT32,
    _T.TYPE_INT64,
    _T.TYPE_UINT32,
    _T.TYPE_UINT64,
    _T.TYPE_SINT32,
    _T.TYPE_SINT64,
    _T.TYPE_FIXED32,
    _T.TYPE_FIXED64,
    _T.TYPE_SFIXED32,
    _T.TYPE_SFIXED64,
}
_FLOATS = {_T.TYPE_DOUBLE, _T.TYPE_FLOAT}

# A value check: (value) -> description of what is wrong, or None.
ValueCheck = Callable[[Any], "str | None"]
# A compiled field check: (message, prefix, out) -> None; appends violations.
FieldCheck = Callable[[Message, str, list[FieldViolation]], None]


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _value_checks(fd: FieldDescriptor, rules: validate_pb2.FieldRules) -> list[ValueCheck]:
    """Checks on one scalar value (a singular field's value or one element of a repeated one)."""
    checks: list[ValueCheck] = []
    t = fd.type
    if t in (_T.TYPE_STRING, _T.TYPE_BYTES):
        unit = "characters" if t == _T.TYPE_STRING else "bytes"
        if rules.HasField("min_len"):
            lo = rules.min_len

            def min_len(v: Any, lo: int = lo) -> str | None:
                return f"must be at least {lo} {unit} long" if len(v) < lo else None

            checks.append(min_len)
        if rules.HasField("max_len"):
            hi = rules.max_len

            def max_len(v: Any, hi: int = hi) -> str | None:
                return f"must be at most {hi} {unit} long" if len(v) > hi else None

            checks.append(max_len)
        if rules.pattern and t == _T.TYPE_STRING:
            rx = re.compile(rules.pattern)
            pattern = rules.pattern

            def match(v: str, rx: re.Pattern[str] = rx) -> str | None:
                return f"must match {pattern}" if v and rx.fullmatch(v) is None else None

            checks.append(match)
    if t in _NUMERIC:
        if rules.finite and t in _FLOATS:
            checks.append(lambda v: "must be a finite number" if not math.isfinite(v) else None)
        bounds: list[tuple[str, float]] = []
        for name in ("gte", "lte", "gt", "lt"):
            if rules.HasField(name):
                bounds.append((name, getattr(rules, name)))
        if bounds:
            checks.append(_bounds_check(bounds))
    if t == _T.TYPE_ENUM and rules.defined_only and fd.enum_type is not None:
        defined = frozenset(v.number for v in fd.enum_type.values)
        checks.append(lambda v: "must be one of the defined values" if v not in defined else None)
    return checks


def _bounds_check(bounds: list[tuple[str, float]]) -> ValueCheck:
    lo = next((b for b in bounds if b[0] in ("gte", "gt")), None)
    hi = next((b for b in bounds if b[0] in ("lte", "lt")), None)
    words = []
    if lo:
        words.append(f"{'>=' if lo[0] == 'gte' else '>'} {_fmt(lo[1])}")
    if hi:
        words.append(f"{'<=' if hi[0] == 'lte' else '<'} {_fmt(hi[1])}")
    text = "must be " + " and ".join(words)

    def within(v: float) -> str | None:
        if v != v:  # NaN fails every bound
            return text
        for op, limit in bounds:
            if op == "gte" and not v >= limit:
                return text
            if op == "lte" and not v <= limit:
                return text
            if op == "gt" and not v > limit:
                return text
            if op == "lt" and not v < limit:
                return text
        return None

    return within


def _is_map(fd: FieldDescriptor) -> bool:
    return (
        fd.is_repeated
        and fd.type == _T.TYPE_MESSAGE
        and fd.message_type is not None
        and fd.message_type.GetOptions().map_entry
    )


def _compile_field(fd: FieldDescriptor, rules: validate_pb2.FieldRules | None) -> FieldCheck | None:
    name = fd.name
    repeated = fd.is_repeated
    is_message = fd.type == _T.TYPE_MESSAGE
    has_presence = fd.has_presence and not repeated
    required = bool(rules and rules.required)
    value_checks = _value_checks(fd, rules) if rules is not None and not is_message else []
    min_items = rules.min_items if rules is not None and rules.HasField("min_items") else None
    max_items = rules.max_items if rules is not None and rules.HasField("max_items") else None

    if _is_map(fd):
        assert fd.message_type is not None
        value_fd = fd.message_type.fields_by_name["value"]
        nested = (_rules_for(value_fd.message_type)
                  if value_fd.type == _T.TYPE_MESSAGE and value_fd.message_type is not None else None)
        if not (required or min_items is not None or max_items is not None or nested):
            return None

        def check_map(msg: Message, prefix: str, out: list[FieldViolation]) -> None:
            items = getattr(msg, name)
            path = prefix + name
            n = len(items)
            if required and n == 0:
                out.append(FieldViolation(path, "is required"))
            if min_items is not None and n < min_items:
                out.append(FieldViolation(path, f"must have at least {min_items} entries"))
            if max_items is not None and n > max_items:
                out.append(FieldViolation(path, f"must have at most {max_items} entries"))
            if nested:
                for key in sorted(items):
                    _run(nested, items[key], f"{path}[{key}].", out)

        return check_map

    if (is_message and fd.message_type is not None and fd.message_type.full_name == "google.protobuf.FieldMask"
            and rules is not None and rules.mask_paths):
        allowed = frozenset(rules.mask_paths) | {"*"}
        listed = ", ".join(rules.mask_paths)

        def check_mask(msg: Message, prefix: str, out: list[FieldViolation]) -> None:
            if not msg.HasField(name):
                if required:
                    out.append(FieldViolation(prefix + name, "is required"))
                return
            for i, path in enumerate(getattr(msg, name).paths):
                if path.strip() not in allowed:
                    out.append(FieldViolation(f"{prefix}{name}.paths[{i}]",
                                              f"{path!r} is not a field that can be changed; one of: {listed}"))

        return check_mask

    nested = _rules_for(fd.message_type) if is_message and fd.message_type is not None else None
    if not (required or value_checks or min_items is not None or max_items is not None or nested):
        return None

    if repeated:

        def check_repeated(msg: Message, prefix: str, out: list[FieldViolation]) -> None:
            items = getattr(msg, name)
            n = len(items)
            path = prefix + name
            if required and n == 0:
                out.append(FieldViolation(path, "is required"))
            if min_items is not None and n < min_items:
                out.append(FieldViolation(path, f"must have at least {min_items} items"))
            if max_items is not None and n > max_items:
                out.append(FieldViolation(path, f"must have at most {max_items} items"))
                return  # do not walk a huge list item by item
            if value_checks:
                for i, v in enumerate(items):
                    for check in value_checks:
                        problem = check(v)
                        if problem is not None:
                            out.append(FieldViolation(f"{path}[{i}]", problem))
                            break
            if nested:
                for i, item in enumerate(items):
                    _run(nested, item, f"{path}[{i}].", out)

        return check_repeated

    if is_message:

        def check_message(msg: Message, prefix: str, out: list[FieldViolation]) -> None:
            if not msg.HasField(name):
                if required:
                    out.append(FieldViolation(prefix + name, "is required"))
                return
            if nested:
                _run(nested, getattr(msg, name), f"{prefix}{name}.", out)

        return check_message

    def check_scalar(msg: Message, prefix: str, out: list[FieldViolation]) -> None:
        if has_presence and not msg.HasField(name):
            if required:
                out.append(FieldViolation(prefix + name, "is required"))
            return
        v = getattr(msg, name)
        if required and not v:
            out.append(FieldViolation(prefix + name, "is required"))
            return
        for check in value_checks:
            problem = check(v)
            if problem is not None:
                out.append(FieldViolation(prefix + name, problem))
                return  # one violation per value: the first rule it breaks

    return check_scalar


def _comparable(msg: Message, fd: FieldDescriptor) -> Any:
    """A field's value as something ordered (Timestamp/Duration as (seconds, nanos))."""
    value = getattr(msg, fd.name)
    if fd.type == _T.TYPE_MESSAGE:
        return (value.seconds, value.nanos)
    return value


def _message_checks(desc: Descriptor) -> list[FieldCheck]:
    """The message-level rules (towerco.validate.v1.message): field orderings."""
    opts = desc.GetOptions()
    if not opts.HasExtension(_MSG_EXT):
        return []
    checks: list[FieldCheck] = []
    for pair in opts.Extensions[_MSG_EXT].ordered:
        lo_fd, hi_fd = desc.fields_by_name[pair.lesser], desc.fields_by_name[pair.greater]

        def ordered(msg: Message, prefix: str, out: list[FieldViolation], lo_fd: FieldDescriptor = lo_fd,
                    hi_fd: FieldDescriptor = hi_fd, equal_ok: bool = pair.allow_equal) -> None:
            for fd in (lo_fd, hi_fd):
                if (not msg.HasField(fd.name)) if fd.has_presence else not getattr(msg, fd.name):
                    return
            hi, lo = _comparable(msg, hi_fd), _comparable(msg, lo_fd)
            if not (hi >= lo if equal_ok else hi > lo):
                words = f"at least {lo_fd.name}" if equal_ok else f"after {lo_fd.name}"
                out.append(FieldViolation(prefix + hi_fd.name, f"must be {words}"))

        checks.append(ordered)
    return checks


# Compiled rules per message full name; an empty tuple means "nothing to check anywhere below".
_compiled: dict[str, tuple[FieldCheck, ...]] = {}
_compiling: set[str] = set()


class _Lazy:
    """A forward reference for recursive message types while they are being compiled."""

    __slots__ = ("full_name",)

    def __init__(self, full_name: str):
        self.full_name = full_name


def _rules_for(desc: Descriptor) -> tuple[FieldCheck, ...] | _Lazy | None:
    """Compiled checks of a message type (None when neither it nor anything below has rules)."""
    key = desc.full_name
    hit = _compiled.get(key)
    if hit is not None:
        return hit or None
    if key in _compiling:
        return _Lazy(key)
    _compiling.add(key)
    try:
        checks: list[FieldCheck] = []
        for fd in desc.fields:
            opts = fd.GetOptions()
            rules = opts.Extensions[_EXT] if opts.HasExtension(_EXT) else None
            check = _compile_field(fd, rules)
            if check is not None:
                checks.append(check)
        checks.extend(_message_checks(desc))
    finally:
        _compiling.discard(key)
    compiled = tuple(checks)
    _compiled[key] = compiled
    return compiled or None


def _run(checks: tuple[FieldCheck, ...] | _Lazy, msg: Message, prefix: str, out: list[FieldViolation]) -> None:
    if isinstance(checks, _Lazy):
        resolved = _compiled.get(checks.full_name)
        if not resolved:
            return
        checks = resolved
    for check in checks:
        check(msg, prefix, out)


def violations(msg: Message) -> list[FieldViolation]:
    """Every rule violation in `msg`, in field order, depth first."""
    checks: tuple[FieldCheck, ...] | _Lazy | None = _compiled.get(msg.DESCRIPTOR.full_name)
    if checks is None:
        checks = _rules_for(msg.DESCRIPTOR) or ()  # type: ignore[arg-type]  # upb's Descriptor is one
    if not checks:
        return []
    out: list[FieldViolation] = []
    if isinstance(checks, _Lazy):  # only while its own type is being compiled
        _run(checks, msg, "", out)
        return out
    for check in checks:
        check(msg, "", out)
    return out


def has_rules(desc: Descriptor) -> bool:
    """True when validating a message of this type can ever find a violation."""
    return bool(_rules_for(desc))


def validate(msg: Message) -> None:
    """Raise InvalidArgument listing every violation in `msg`; return quietly when it is valid."""
    found = violations(msg)
    if found:
        first = found[0]
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise InvalidArgument(f"invalid {msg.DESCRIPTOR.name}: {first.field} {first.description}{more}", found)
