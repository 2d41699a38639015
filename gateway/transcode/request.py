"""Path bindings + query parameters + JSON body -> the request message (proto3 JSON rules).

Order, as in grpc-gateway: the body first, then path variables (which win over the body), then
query parameters for the fields neither of them bound. Every problem is collected as a field
violation and raised together as TranscodeError (the gateway answers 400 with all of them).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway.transcode import codec
from mesh.errors import FieldViolation

F = FieldDescriptor
QUERY_LEAF_MESSAGES = codec.WRAPPERS | {codec.TIMESTAMP, codec.DURATION, codec.FIELD_MASK}


class TranscodeError(Exception):
    """The HTTP request cannot become the RPC's request message."""

    def __init__(self, message: str, violations: Iterable[FieldViolation] = ()):
        super().__init__(message)
        self.message = message
        self.violations = list(violations)


_RESOLVED: dict[tuple[str, str], list[FieldDescriptor]] = {}


def resolve_field(desc: Descriptor, dotted: str) -> list[FieldDescriptor]:
    """The chain of fields a dotted path (snake_case or lowerCamelCase parts) names (cached)."""
    key = (desc.full_name, dotted)
    hit = _RESOLVED.get(key)
    if hit is not None:
        return hit
    chain = _resolve(desc, dotted)
    if len(_RESOLVED) < 100_000:
        _RESOLVED[key] = chain
    return chain


def _resolve(desc: Descriptor, dotted: str) -> list[FieldDescriptor]:
    chain: list[FieldDescriptor] = []
    d: Descriptor | None = desc
    for part in dotted.split("."):
        if d is None:
            raise KeyError(dotted)
        fd = d.fields_by_name.get(part) or d.fields_by_camelcase_name.get(part)
        if fd is None:
            for cand in d.fields:  # custom json_name
                if cand.json_name == part:
                    fd = cand
                    break
        if fd is None:
            raise KeyError(dotted)
        chain.append(fd)
        d = fd.message_type if fd.type == F.TYPE_MESSAGE else None
    return chain


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry


def set_text(msg: Message, chain: list[FieldDescriptor], text: str, *, repeated_ok: bool) -> None:
    """Set the field at the end of chain from a path or query text value (ValueError if bad)."""
    target = msg
    for fd in chain[:-1]:
        if fd.is_repeated:
            raise ValueError("a repeated message cannot be addressed by a path or query parameter")
        target = getattr(target, fd.name)
    leaf = chain[-1]
    if _is_map(leaf):
        raise ValueError("map fields cannot be set from a path or query parameter; send a body")
    if leaf.type == F.TYPE_MESSAGE:
        full = leaf.message_type.full_name
        if full not in QUERY_LEAF_MESSAGES:
            raise ValueError("this field is a message; set its fields with dotted names (e.g. page.size)")
        if leaf.is_repeated:
            if not repeated_ok:
                raise ValueError("a repeated field cannot be bound here")
            sub = getattr(target, leaf.name).add()
        else:
            sub = getattr(target, leaf.name)
        _set_wkt_text(sub, text)
        if not leaf.is_repeated:
            sub.SetInParent()
        return
    value = codec.scalar_from_text(leaf, text)
    if leaf.is_repeated:
        if not repeated_ok:
            raise ValueError("a repeated field cannot be bound here")
        getattr(target, leaf.name).append(value)
    else:
        setattr(target, leaf.name, value)


def _set_wkt_text(sub: Message, text: str) -> None:
    full = sub.DESCRIPTOR.full_name
    if full == codec.TIMESTAMP:
        sub.seconds, sub.nanos = codec.parse_timestamp(text)
    elif full == codec.DURATION:
        sub.seconds, sub.nanos = codec.parse_duration(text)
    elif full == codec.FIELD_MASK:
        del sub.paths[:]
        sub.paths.extend(codec.parse_field_mask(text))
    else:  # wrappers
        sub.value = codec.scalar_from_text(sub.DESCRIPTOR.fields_by_name["value"], text)


def mask_paths(obj: dict[str, Any], desc: Descriptor, prefix: str = "") -> list[str]:
    """Field mask paths for the JSON keys present in a PATCH body (nested objects recurse)."""
    out: list[str] = []
    for key, value in obj.items():
        try:
            fd = resolve_field(desc, key)[0]
        except KeyError:
            continue  # the decoder reports unknown fields
        path = f"{prefix}{fd.name}"
        if (
            fd.type == F.TYPE_MESSAGE
            and not fd.is_repeated
            and fd.message_type.full_name not in QUERY_LEAF_MESSAGES
            and fd.message_type.full_name not in codec.FREEFORM
            and isinstance(value, dict)
            and value
        ):
            out.extend(mask_paths(value, fd.message_type, path + "."))
        else:
            out.append(path)
    return out


def _string_at(msg: Message, chain: list[FieldDescriptor]) -> str:
    """The string a body set at the end of chain ("" when unset or not a singular string)."""
    target = msg
    for fd in chain[:-1]:
        if fd.is_repeated or fd.type != F.TYPE_MESSAGE or not target.HasField(fd.name):
            return ""
        target = getattr(target, fd.name)
    leaf = chain[-1]
    if leaf.is_repeated or leaf.type != F.TYPE_STRING:
        return ""
    return getattr(target, leaf.name)


def build(
    *,
    request_cls: type[Message],
    body_rule: str,
    http_method: str,
    path_params: dict[str, str],
    query: list[tuple[str, str]],
    body: bytes,
    decoder: codec.Decoder,
    reserved_query: frozenset[str] = frozenset(),
) -> Message:
    msg = request_cls()
    desc = msg.DESCRIPTOR
    violations: list[FieldViolation] = []
    obj: Any = None

    # 1. body
    if body.strip():
        if not body_rule:
            raise TranscodeError("this method takes no request body")
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise TranscodeError(f"the body is not valid JSON: {exc}") from None
        except RecursionError:
            raise TranscodeError("the body is nested too deeply") from None
        try:
            if body_rule == "*":
                decoder.decode(obj, msg)
            else:
                fd = desc.fields_by_name[body_rule]
                if fd.type == F.TYPE_MESSAGE and not fd.is_repeated:
                    sub = getattr(msg, fd.name)
                    decoder.decode(obj, sub, fd.name)
                    sub.SetInParent()
                else:
                    decoder.decode({fd.name: obj}, msg)
        except codec.JsonError as exc:
            violations.extend(exc.violations)
        except RecursionError:
            raise TranscodeError("the body is nested too deeply") from None

    # 2. path variables; a body repeating one must agree with the path (not be silently overridden)
    for field_path, text in path_params.items():
        chain = resolve_field(desc, field_path)  # checked when the route was built
        given_in_body = _string_at(msg, chain) if obj is not None else ""
        if given_in_body and given_in_body != text:
            violations.append(FieldViolation(field_path, f"the body says {given_in_body[:64]!r} but the path says "
                                                         f"{text[:64]!r}: leave it out of the body or send the same"))
            continue
        try:
            set_text(msg, chain, text, repeated_ok=False)
        except ValueError as exc:
            violations.append(FieldViolation(field_path, str(exc)))

    # 3. query parameters for the fields neither bound
    given: set[str] = set()
    for key, text in query:
        if key in reserved_query:
            continue
        if body_rule == "*":
            violations.append(FieldViolation(key, "this method takes every field in the body; query parameters are not accepted"))
            continue
        try:
            chain = resolve_field(desc, key)
        except KeyError:
            violations.append(FieldViolation(key, f"unknown query parameter: {desc.full_name} has no field {key!r}"))
            continue
        snake = ".".join(fd.name for fd in chain)
        if body_rule and snake.split(".")[0] == body_rule:
            violations.append(FieldViolation(snake, "this field is sent in the body, not as a query parameter"))
            continue
        if any(snake == p or snake.startswith(p + ".") or p.startswith(snake + ".") for p in path_params):
            violations.append(FieldViolation(snake, "this field is bound by the URL path"))
            continue
        leaf = chain[-1]
        if snake in given and not leaf.is_repeated:
            violations.append(FieldViolation(snake, "given more than once but not repeated"))
            continue
        given.add(snake)
        try:
            set_text(msg, chain, text, repeated_ok=True)
        except ValueError as exc:
            violations.append(FieldViolation(snake, str(exc)))

    if violations:
        raise TranscodeError("the request does not fit " + desc.full_name, violations)

    # 4. PATCH without a mask: infer it from the JSON keys present in the body
    if http_method == "PATCH" and body_rule and body_rule != "*" and isinstance(obj, dict):
        mask_fd = desc.fields_by_name.get("update_mask")
        if (
            mask_fd is not None
            and mask_fd.message_type is not None
            and mask_fd.message_type.full_name == codec.FIELD_MASK
            and not msg.HasField("update_mask")
        ):
            body_fd = desc.fields_by_name[body_rule]
            if body_fd.type == F.TYPE_MESSAGE:
                msg.update_mask.paths.extend(mask_paths(obj, body_fd.message_type))
    return msg


def encode_response(resp: Message, response_body: str) -> Any:
    """The JSON-ready response: the whole message, or only its response_body field."""
    if not response_body:
        return codec.ENCODER.encode(resp)
    fd = resp.DESCRIPTOR.fields_by_name[response_body]
    value = getattr(resp, fd.name)
    if _is_map(fd) or fd.is_repeated or fd.type != F.TYPE_MESSAGE:
        wrapped = codec.ENCODER.encode(resp).get(fd.json_name)
        if wrapped is None:
            return {} if _is_map(fd) else [] if fd.is_repeated else _default_json(fd)
        return wrapped
    return codec.ENCODER.encode(value)


def _default_json(fd: FieldDescriptor) -> Any:
    t = fd.type
    if t == F.TYPE_STRING or t == F.TYPE_BYTES:
        return ""
    if t == F.TYPE_BOOL:
        return False
    if t in codec.INT64_TYPES or t in codec.UINT64_TYPES:
        return "0"
    if t == F.TYPE_ENUM:
        return fd.enum_type.values_by_number[0].name if 0 in fd.enum_type.values_by_number else 0
    return 0
