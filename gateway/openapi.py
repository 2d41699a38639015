"""OpenAPI 3.1 built from the same descriptors and http rules the routes come from.

Schemas follow the proto3 JSON mapping the gateway speaks: lowerCamelCase property names,
64-bit integers as strings, enums by name, Timestamp as date-time, Duration as "1.5s", FieldMask
as a comma-separated string, wrappers as nullable scalars. `google.api.field_behavior`
REQUIRED fields are `required`, OUTPUT_ONLY ones `readOnly`; the project's declarative
validation rules (towerco.validate.v1) become JSON Schema bounds; proto comments (read from
gen/towerco/descriptor_set.binpb, which scripts/gen.py writes with source info) become
descriptions. Errors are the google.rpc.Status JSON the gateway returns.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gateway import edge
from gateway.call import TOKEN_PARAM
from gateway.transcode import codec
from gateway.transcode.request import resolve_field
from gateway.transcode.routes import Route, declared_required, validated_required

F = FieldDescriptor
STATUS_REF = {"$ref": "#/components/schemas/google.rpc.Status"}
ERROR_CODES = ("400", "401", "403", "404", "429", "503")
_INT64_PATTERN = "^-?[0-9]+$"
_UINT64_PATTERN = "^[0-9]+$"
_DURATION_PATTERN = r"^-?[0-9]+(\.[0-9]{1,9})?s$"
_FLOAT_SPECIAL = {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]}
MAX_QUERY_DEPTH = 3
_PARAM = re.compile(r"\{([^}]+)\}")


def load_comments(path: Path | None = None) -> dict[str, str]:
    """full name -> leading comment, from a FileDescriptorSet with source info."""
    if path is None:
        import towerco

        path = Path(towerco.__path__[0]) / "descriptor_set.binpb"
    if not path.exists():
        return {}
    fds = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    out: dict[str, str] = {}
    for f in fds.file:
        by_path = {tuple(loc.path): loc.leading_comments for loc in f.source_code_info.location if loc.leading_comments}
        pkg = f.package + "." if f.package else ""
        for i, m in enumerate(f.message_type):
            _message_comments(out, by_path, m, pkg, (4, i))
        for i, e in enumerate(f.enum_type):
            _enum_comments(out, by_path, e, pkg, (5, i))
        for i, s in enumerate(f.service):
            _put(out, pkg + s.name, by_path.get((6, i)))
            for j, meth in enumerate(s.method):
                _put(out, f"{pkg}{s.name}.{meth.name}", by_path.get((6, i, 2, j)))
    return out


def _message_comments(out: dict, by_path: dict, m: descriptor_pb2.DescriptorProto, prefix: str, p: tuple[int, ...]) -> None:
    full = prefix + m.name
    _put(out, full, by_path.get(p))
    for j, fld in enumerate(m.field):
        _put(out, f"{full}.{fld.name}", by_path.get((*p, 2, j)))
    for k, nested in enumerate(m.nested_type):
        _message_comments(out, by_path, nested, full + ".", (*p, 3, k))
    for k, en in enumerate(m.enum_type):
        _enum_comments(out, by_path, en, full + ".", (*p, 4, k))


def _enum_comments(out: dict, by_path: dict, e: descriptor_pb2.EnumDescriptorProto, prefix: str, p: tuple[int, ...]) -> None:
    full = prefix + e.name
    _put(out, full, by_path.get(p))
    for j, v in enumerate(e.value):
        _put(out, f"{full}.{v.name}", by_path.get((*p, 2, j)))


def _put(out: dict[str, str], key: str, text: str | None) -> None:
    if text:
        lines = [ln[1:] if ln.startswith(" ") else ln for ln in text.strip("\n").split("\n")]
        out[key] = "\n".join(lines).strip()


def _behaviors(fd: FieldDescriptor) -> set[int]:
    return set(fd.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def _message_rules(d: Descriptor) -> Any:
    from towerco.validate.v1 import validate_pb2

    opts = d.GetOptions()
    return opts.Extensions[validate_pb2.message] if opts.HasExtension(validate_pb2.message) else None


def _camel(path: str) -> str:
    return ".".join(codec.snake_to_camel(p) for p in path.split("."))


def mask_pattern(paths: list[str]) -> str:
    """A comma-separated list of the allowed paths (lowerCamelCase or snake_case) or "*"."""
    names = sorted({*paths, *(_camel(p) for p in paths)}, key=lambda x: (-len(x), x))
    one = "(" + "|".join([re.escape(n) for n in names] + [r"\*"]) + ")"
    return f"^({one}(,{one})*)?$"  # empty: as if absent (the mask is inferred from the body)


def _rules(fd: FieldDescriptor) -> Any:
    try:
        from towerco.validate.v1 import validate_pb2
    except ImportError:  # pragma: no cover
        return None
    opts = fd.GetOptions()
    if not opts.HasExtension(validate_pb2.field):
        return None
    return opts.Extensions[validate_pb2.field]


def _ordered_text(ordered: list[dict]) -> str:
    return " ".join(f"`{o['greater']}` must be {'at least' if o.get('allowEqual') else 'after'} `{o['lesser']}`"
                    " when both are set." for o in ordered)


_META = ("description", "readOnly", "title")


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """proto3 JSON reads null as the field's default: an optional field may be sent as null."""
    if schema.get("type") == "null" or any(s.get("type") == "null" for s in schema.get("anyOf", [])):
        return schema
    inner = {k: v for k, v in schema.items() if k not in _META}
    outer = {k: v for k, v in schema.items() if k in _META}
    return {"anyOf": [inner, {"type": "null"}], **outer}


class Builder:
    """Schemas in two modes: the full one (create bodies, responses: REQUIRED fields required and
    non-empty) and the patch one (update bodies with an update_mask, components named
    `<message>.Patch`: only what the interceptor enforces on every request)."""

    def __init__(self, comments: dict[str, str]):
        self.comments = comments
        self.schemas: dict[str, Any] = {}
        self.patch = False

    # ------------------------------------------------------------------------------ schemas
    def ref(self, d: Descriptor) -> dict[str, Any]:
        wkt = self.wkt(d)
        if wkt is not None:
            return wkt
        name = d.full_name + (".Patch" if self.patch else "")
        if name not in self.schemas:
            self.schemas[name] = {}  # placeholder: recursion
            self.schemas[name] = self.message(d)
        return {"$ref": f"#/components/schemas/{name}"}

    def wkt(self, d: Descriptor) -> dict[str, Any] | None:
        full = d.full_name
        if full == codec.TIMESTAMP:
            return {"type": "string", "format": "date-time", "examples": ["2026-01-31T12:00:00Z"]}
        if full == codec.DURATION:
            return {"type": "string", "pattern": _DURATION_PATTERN, "examples": ["1.5s"]}
        if full == codec.FIELD_MASK:
            return {"type": "string", "description": "Comma-separated lowerCamelCase field paths.", "examples": ["name,power.solarKwp"]}
        if full in codec.WRAPPERS:
            inner = self.scalar(d.fields_by_name["value"])
            return {"anyOf": [inner, {"type": "null"}]}
        if full == "google.protobuf.Struct":
            return {"type": "object", "additionalProperties": True}
        if full == "google.protobuf.Value":
            return {}
        if full == "google.protobuf.ListValue":
            return {"type": "array", "items": {}}
        if full == "google.protobuf.Any":
            return {"type": "object", "properties": {"@type": {"type": "string"}}, "required": ["@type"], "additionalProperties": True}
        if full == codec.EMPTY:
            return {"type": "object", "additionalProperties": False}
        return None

    def scalar(self, fd: FieldDescriptor) -> dict[str, Any]:
        t = fd.type
        if t == F.TYPE_STRING:
            return {"type": "string", "pattern": codec.NO_NUL_PATTERN}
        if t == F.TYPE_BYTES:
            return {"type": "string", "format": "byte", "contentEncoding": "base64"}
        if t == F.TYPE_BOOL:
            return {"type": "boolean"}
        # 64-bit integers are strings in proto3 JSON output; input also takes JSON numbers
        if t in codec.INT64_TYPES:
            return {"anyOf": [{"type": "string", "format": "int64", "pattern": _INT64_PATTERN},
                              {"type": "integer", "format": "int64"}]}
        if t in codec.UINT64_TYPES:
            return {"anyOf": [{"type": "string", "format": "uint64", "pattern": _UINT64_PATTERN},
                              {"type": "integer", "format": "int64", "minimum": 0}]}
        if t in codec.INT32_TYPES:
            return {"type": "integer", "format": "int32"}
        if t in codec.UINT32_TYPES:
            return {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1}
        if t in codec.FLOAT_TYPES:
            fmt = "float" if t == F.TYPE_FLOAT else "double"
            return {"oneOf": [{"type": "number", "format": fmt}, _FLOAT_SPECIAL]}
        if t == F.TYPE_ENUM:
            return self.enum(fd)
        if t == F.TYPE_MESSAGE:
            return self.ref(fd.message_type)
        return {}

    def enum(self, fd: FieldDescriptor) -> dict[str, Any]:
        ed = fd.enum_type
        values = [v.name for v in ed.values]
        lines = [f"- `{v.name}`: {self.comments[f'{ed.full_name}.{v.name}']}" for v in ed.values if f"{ed.full_name}.{v.name}" in self.comments]
        # proto3 JSON takes an enum by name or by number; a defined_only rule allows only the
        # declared numbers, otherwise any int32 is kept as an unknown value
        rules = _rules(fd)
        if rules is not None and rules.defined_only:
            schema: dict[str, Any] = {"enum": values + [v.number for v in ed.values], "title": ed.name}
        else:
            schema = {"anyOf": [{"type": "string", "enum": values}, {"type": "integer", "format": "int32"}],
                      "title": ed.name}
        if lines:
            head = self.comments.get(ed.full_name, "")
            schema["description"] = (head + "\n\n" if head else "") + "\n".join(lines)
        return schema

    def field(self, fd: FieldDescriptor) -> dict[str, Any]:
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            val = fd.message_type.fields_by_name["value"]
            schema: dict[str, Any] = {"type": "object", "additionalProperties": self.scalar(val)}
        elif fd.is_repeated:
            schema = {"type": "array", "items": self.scalar(fd)}
        else:
            schema = dict(self.scalar(fd))
        if self.required(fd):
            self.non_empty(fd, schema)
        if fd.message_type is not None and fd.message_type.full_name == codec.FIELD_MASK:
            rules = _rules(fd)
            if rules is not None and rules.mask_paths:
                schema = {"type": "string", "pattern": mask_pattern(list(rules.mask_paths)),
                          "description": "Comma-separated paths to change: " + ", ".join(
                              _camel(p) for p in rules.mask_paths) + ', or "*" for every one.',
                          "examples": [_camel(rules.mask_paths[0])]}
        behaviors = _behaviors(fd)
        desc = self.comments.get(fd.full_name, "")
        if field_behavior_pb2.OUTPUT_ONLY in behaviors:
            schema["readOnly"] = True
        if field_behavior_pb2.IMMUTABLE in behaviors:
            desc = (desc + " " if desc else "") + "(Immutable.)"
        if desc:
            schema["description"] = desc
        self.apply_rules(fd, schema)
        return schema

    def required(self, fd: FieldDescriptor) -> bool:
        """Must the field be present (and non-empty) in this mode?"""
        return validated_required(fd) or (not self.patch and declared_required(fd))

    @staticmethod
    def non_empty(fd: FieldDescriptor, schema: dict[str, Any]) -> None:
        """What "required" means on the wire: a non-empty string, at least one item, a set enum."""
        if fd.is_repeated:
            schema["minItems"] = max(schema.get("minItems", 0), 1)
        elif fd.type in (F.TYPE_STRING, F.TYPE_BYTES):
            schema["minLength"] = max(schema.get("minLength", 0), 1)
        elif fd.type == F.TYPE_ENUM:
            zero = {v.name for v in fd.enum_type.values if v.number == 0} | {0}
            if "enum" in schema:
                schema["enum"] = [n for n in schema["enum"] if n not in zero]
            elif "anyOf" in schema:
                names, number = schema["anyOf"]
                schema["anyOf"] = [{**names, "enum": [n for n in names["enum"] if n not in zero]},
                                   {**number, "not": {"const": 0}}]

    def apply_rules(self, fd: FieldDescriptor, schema: dict[str, Any]) -> None:
        rules = _rules(fd)
        if rules is None:
            return
        target = schema
        if fd.is_repeated:
            if rules.HasField("min_items"):
                schema["minItems"] = rules.min_items
            if rules.HasField("max_items"):
                schema["maxItems"] = rules.max_items
            target = schema.get("items", {})
            if "$ref" in target:
                return
            target = schema["items"] = dict(target)
        if fd.type == F.TYPE_STRING:
            if rules.HasField("min_len"):
                target["minLength"] = rules.min_len
            if rules.HasField("max_len"):
                target["maxLength"] = rules.max_len
            if rules.pattern:
                # the rule applies to non-empty strings: "" is the unset value and always passes
                target["pattern"] = f"(^$)|({rules.pattern})"
        elif fd.type in codec.INT64_TYPES and "anyOf" in target:
            text, number = (dict(x) for x in target["anyOf"])
            for name, key in (("gte", "minimum"), ("lte", "maximum"), ("gt", "exclusiveMinimum"), ("lt", "exclusiveMaximum")):
                if rules.HasField(name):
                    number[key] = int(getattr(rules, name))
            if rules.HasField("gte") and rules.gte >= 0:
                text["pattern"] = _UINT64_PATTERN  # a string cannot state a bound, but it can state no sign
            target["anyOf"] = [text, number]
        elif fd.type in codec.FLOAT_TYPES or fd.type in codec.INT32_TYPES or fd.type in codec.UINT32_TYPES:
            num = target["oneOf"][0] if "oneOf" in target else target
            for name, key in (("gte", "minimum"), ("lte", "maximum"), ("gt", "exclusiveMinimum"), ("lt", "exclusiveMaximum")):
                if rules.HasField(name):
                    value = getattr(rules, name)
                    num[key] = int(value) if value.is_integer() and fd.type not in codec.FLOAT_TYPES else value
            if rules.finite and "oneOf" in target:
                target.clear()
                target.update(num)

    def message(self, d: Descriptor) -> dict[str, Any]:
        props: dict[str, Any] = {}
        required: list[str] = []
        for fd in d.fields:
            prop = self.field(fd)
            if self.required(fd):
                required.append(fd.json_name)
            else:
                prop = _nullable(prop)
            props[fd.json_name] = prop
        # unknown fields are refused (TOWERCO_GATEWAY_UNKNOWN_FIELDS=reject, the default)
        schema: dict[str, Any] = {"type": "object", "title": d.name + (" (patch)" if self.patch else ""),
                                  "properties": props, "additionalProperties": False}
        if required:
            schema["required"] = required
        desc = self.comments.get(d.full_name, "")
        ordered = self.ordered(d)
        if ordered:
            schema["x-towerco-ordered"] = ordered
            desc = (desc + "\n\n" if desc else "") + _ordered_text(ordered)
        if desc:
            schema["description"] = desc
        return schema

    @staticmethod
    def ordered(d: Descriptor, prefix: str = "") -> list[dict[str, str]]:
        """The message's field orderings, as JSON names (with a dotted query prefix)."""
        rules = _message_rules(d)
        if rules is None:
            return []
        by_name = d.fields_by_name
        return [{"lesser": prefix + by_name[o.lesser].json_name, "greater": prefix + by_name[o.greater].json_name,
                 **({"allowEqual": True} if o.allow_equal else {})} for o in rules.ordered]

    # ------------------------------------------------------------------------------ operations
    def query_params(self, d: Descriptor, prefix: str, skip: set[str], depth: int, snake_prefix: str = "",
                     parents_required: bool = True, ordered: list | None = None) -> list[dict[str, Any]]:
        """Query parameters of the fields not bound elsewhere; one is required when it and every
        message above it are required. Orderings of expanded messages go to `ordered`."""
        out: list[dict[str, Any]] = []
        for fd in d.fields:
            snake = snake_prefix + fd.name
            if snake in skip:
                continue
            name = prefix + fd.json_name
            is_map = fd.message_type is not None and fd.message_type.GetOptions().map_entry
            if is_map:
                continue
            if fd.type == F.TYPE_MESSAGE and fd.message_type.full_name not in codec.WRAPPERS | {codec.TIMESTAMP, codec.DURATION, codec.FIELD_MASK}:
                if fd.is_repeated or depth >= MAX_QUERY_DEPTH or fd.message_type.full_name in codec.FREEFORM:
                    continue
                if ordered is not None:
                    ordered.extend(self.ordered(fd.message_type, prefix=name + "."))
                out.extend(self.query_params(fd.message_type, name + ".", skip, depth + 1, snake + ".",
                                             parents_required and self.required(fd), ordered))
                continue
            schema = self.field(fd)
            if fd.type == F.TYPE_MESSAGE and not (fd.message_type.full_name == codec.FIELD_MASK and "pattern" in schema):
                schema = {k: v for k, v in self.wkt(fd.message_type).items() if k != "anyOf"} or {"type": "string"}
                if fd.message_type.full_name in codec.WRAPPERS:
                    schema = self.scalar(fd.message_type.fields_by_name["value"])
            required = parents_required and self.required(fd)
            if required:
                self.non_empty(fd, schema)
            param: dict[str, Any] = {"name": name, "in": "query", "required": required, "schema": schema}
            desc = self.comments.get(fd.full_name)
            if desc:
                param["description"] = desc
            if fd.is_repeated:
                param["style"] = "form"
                param["explode"] = True
            out.append(param)
        return out

    def body(self, route: Route) -> dict[str, Any]:
        """The request body's schema. An update (a request with an update_mask) takes the patch
        mode; fields bound by the path are taken from it, so the body need not repeat them."""
        m = route.method
        self.patch = "update_mask" in m.input_type.fields_by_name
        try:
            if route.body == "*":
                d, schema = m.input_type, self.ref(m.input_type)
                bound_prefix = ""
            else:
                fd = m.input_type.fields_by_name[route.body]
                d, schema = fd.message_type, self.field(fd)
                bound_prefix = route.body + "."
        finally:
            self.patch = False
        bound = {v.field_path[len(bound_prefix):] for v in route.template.variables
                 if v.field_path.startswith(bound_prefix) and "." not in v.field_path[len(bound_prefix):]}
        if d is None or "$ref" not in schema or not bound:
            return schema
        # a copy of the message's schema without the path-bound fields among the required
        target = self.schemas[schema["$ref"].rsplit("/", 1)[1]]
        json_names = {d.fields_by_name[b].json_name for b in bound if b in d.fields_by_name}
        name = f"{route.operation_id}.Body"
        copy = dict(target, title=f"{target.get('title', d.name)} ({route.method.name} body)")
        copy["properties"] = dict(copy["properties"])
        for j in json_names:  # given by the path: leave it out, or send the same value
            copy["properties"][j] = {**copy["properties"][j], "readOnly": True}
        copy["required"] = [r for r in target.get("required", []) if r not in json_names]
        if not copy["required"]:
            del copy["required"]
        copy["description"] = (target.get("description", "") + "\n\n" + ", ".join(
            f"`{j}`" for j in sorted(json_names)) + " come from the path: leave them out of the body "
            "(or send the same value; a different one is refused).").strip()
        self.schemas[name] = copy
        return {"$ref": f"#/components/schemas/{name}"}

    def operation(self, route: Route) -> dict[str, Any]:
        m = route.method
        comment = self.comments.get(m.full_name, "")
        params: list[dict[str, Any]] = []
        for var in route.template.variables:
            chain = resolve_field(m.input_type, var.field_path)
            schema = self.scalar(chain[-1])
            if var.multi or route.template.variable_pattern(var) not in ("*",):
                schema = {"type": "string", "description": f"matches {route.template.variable_pattern(var)}"}
            else:  # the bound field's own rules: a path segment is never empty
                self.apply_rules(chain[-1], schema)
                if schema.get("type") == "string":
                    schema["minLength"] = max(schema.get("minLength", 0), 1)
            param = {"name": var.param_name, "in": "path", "required": True, "schema": schema}
            desc = self.comments.get(chain[-1].full_name, "")
            if var.param_name != var.field_path:
                desc = f"{desc} (field `{var.field_path}`)".strip()
            if desc:
                param["description"] = desc
            params.append(param)
        ordered: list[dict[str, str]] = []
        if route.body != "*":
            skip = {v.field_path for v in route.template.variables}
            if route.body:
                skip.add(route.body)
            params.extend(self.query_params(m.input_type, "", skip, 0, ordered=ordered))
        params.append({"$ref": "#/components/parameters/XRequestTimeout"})
        params.append({"$ref": "#/components/parameters/XCorrelationId"})
        op: dict[str, Any] = {
            "operationId": route.operation_id,
            "tags": [route.service.name],
            "summary": comment.split("\n")[0] if comment else m.name,
            "parameters": params,
        }
        if comment:
            op["description"] = comment
        for o in ordered:
            o["in"] = "query"
        if route.body:
            body_msg = m.input_type if route.body == "*" else m.input_type.fields_by_name[route.body].message_type
            if body_msg is not None:
                found = self.ordered(body_msg) + [
                    o for f in body_msg.fields if f.message_type is not None and not f.is_repeated
                    for o in self.ordered(f.message_type, prefix=f.json_name + ".")]
                ordered.extend({**o, "in": "body"} for o in found)
        if ordered:
            op["x-towerco-ordered"] = ordered
            op["description"] = (op.get("description", "") + "\n\n" + _ordered_text(ordered)).strip()
        if route.body:
            op["requestBody"] = {"required": route.body_required,
                                 "content": {"application/json": {"schema": self.body(route)}}}
        if route.server_streaming:
            params.append({"name": TOKEN_PARAM, "in": "query", "required": False, "schema": {"type": "string"},
                           "description": "The bearer token, for clients that cannot send headers (EventSource, WebSocket)."})
            if route.resume_field:
                params.append({"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string", "pattern": _INT64_PATTERN},
                               "description": f"Resume after this event id (same as {route.resume_field})."})
            item = self.ref(m.output_type)
            op["description"] = (comment + "\n\n" if comment else "") + (
                "Server-streaming: answered as Server-Sent Events (one `data:` JSON message per event, "
                "`event: error` with a google.rpc.Status on failure, `: heartbeat` comments). The same path "
                "over WebSocket sends `{\"result\": ...}`, `{\"heartbeat\": ...}` and `{\"error\": ...}` frames."
            )
            op["x-server-streaming"] = True
            op["responses"] = {"200": {"description": "A stream of events", "content": {"text/event-stream": {"schema": {"type": "string", "description": f"Server-Sent Events; each `data:` is one {m.output_type.name} (see x-item-schema)."}, "x-item-schema": item}}}}
        elif route.http_body:  # google.api.HttpBody: the raw bytes, with the content type they carry
            params.append({"name": TOKEN_PARAM, "in": "query", "required": False, "schema": {"type": "string"},
                           "description": "The bearer token, e.g. a signed download link's (browsers cannot set headers)."})
            op["responses"] = {"200": {"description": "The raw content", "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
        else:
            if route.response_body:
                schema = self.field(m.output_type.fields_by_name[route.response_body])
                schema.pop("description", None)
            else:
                schema = self.ref(m.output_type)
            op["responses"] = {"200": {"description": "OK", "content": {"application/json": {"schema": schema}}}}
        for code in ERROR_CODES:
            op["responses"][code] = {"$ref": f"#/components/responses/E{code}"}
        if route.body:
            op["responses"]["415"] = {"$ref": "#/components/responses/E415"}
        op["responses"]["default"] = {"$ref": "#/components/responses/Error"}
        return op


_ERROR_TEXT = {
    "400": "Bad request (INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE); field violations in a google.rpc.BadRequest detail.",
    "401": "No or bad bearer token (UNAUTHENTICATED); see WWW-Authenticate.",
    "403": "The token's roles or tenant do not allow this (PERMISSION_DENIED).",
    "404": "Not found (NOT_FOUND): it does not exist, or the caller's tenant may not see it.",
    "415": "The request body is not sent as Content-Type: application/json.",
    "429": "Rate limited (RESOURCE_EXHAUSTED); see Retry-After.",
    "503": "The upstream service is unavailable or its circuit breaker is open (UNAVAILABLE); see Retry-After.",
}


def build(routes: list[Route], *, title: str = "Towerco AIOps API", version: str = "v1") -> dict[str, Any]:
    b = Builder(load_comments())
    paths: dict[str, dict[str, Any]] = {}
    tags: dict[str, dict[str, str]] = {}
    canonical: dict[str, str] = {}  # "/a/{}/b" -> the first path string rendered for it
    for route in sorted(routes, key=lambda r: (r.template.openapi_path(), r.http_method)):
        path = route.template.openapi_path()
        op = b.operation(route)
        key = _PARAM.sub("{}", path)
        first = canonical.setdefault(key, path)
        if first != path:
            # the same URL shape with other variable names (e.g. {site_id} and {tenancy_site_id}):
            # OpenAPI treats them as one path, so rename this operation's path parameters
            renames = dict(zip(_PARAM.findall(path), _PARAM.findall(first), strict=True))
            for param in op["parameters"]:
                if param.get("in") == "path" and param["name"] in renames:
                    param["name"] = renames[param["name"]]
            path = first
        ops = paths.setdefault(path, {})
        method = route.http_method.lower()
        if method in ops:  # two templates render alike (wildcard patterns); keep the first
            continue
        ops[method] = op
        svc = route.service
        tags.setdefault(svc.name, {"name": svc.name, "description": b.comments.get(svc.full_name, "")})
    error_schema = {
        "type": "object",
        "title": "Status",
        "description": (
            "google.rpc.Status: `code` is the gRPC status code number, `message` a developer-facing "
            "text, `details` typed objects (google.rpc.BadRequest with fieldViolations, ErrorInfo, "
            "RetryInfo, ResourceInfo, RequestInfo), each with an `@type`."
        ),
        "properties": {
            "code": {"type": "integer", "format": "int32"},
            "message": {"type": "string"},
            "details": {"type": "array", "items": {"type": "object", "properties": {"@type": {"type": "string"}}, "required": ["@type"], "additionalProperties": True}},
        },
        "required": ["code", "message", "details"],
    }
    b.schemas["google.rpc.Status"] = error_schema
    responses = {f"E{code}": {"description": text, "content": {"application/json": {"schema": STATUS_REF}}} for code, text in _ERROR_TEXT.items()}
    responses["Error"] = {"description": "Any other error, as a google.rpc.Status.", "content": {"application/json": {"schema": STATUS_REF}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": (
                "REST transcoding of the Towerco gRPC services (google.api.http rules). JSON follows the "
                "proto3 JSON mapping: lowerCamelCase names (snake_case accepted), 64-bit integers as strings, "
                "enums by name. Authorize with a bearer JWT (`towerco token`). Deadlines: `X-Request-Timeout` "
                "(seconds) or `Grpc-Timeout`, default 10 s."
            ),
        },
        "tags": list(tags.values()),
        "paths": paths,
        "components": {
            "schemas": dict(sorted(b.schemas.items())),
            "responses": responses,
            "parameters": {
                "XRequestTimeout": {"name": "X-Request-Timeout", "in": "header", "required": False,
                                    "schema": {"type": "string", "pattern": edge.REQUEST_TIMEOUT_PATTERN},
                                    "description": "Deadline for this request: seconds (\"2.5\", \"2.5s\") or \"800ms\", "
                                                   "at most 3 decimals; default 10 s, capped by the gateway's maximum."},
                "XCorrelationId": {"name": "X-Correlation-ID", "in": "header", "required": False,
                                   "schema": {"type": "string", "pattern": edge.CORRELATION_PATTERN},
                                   "description": "Echoed back and forwarded upstream; generated when absent."},
            },
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        "security": [{"bearerAuth": []}],
    }
