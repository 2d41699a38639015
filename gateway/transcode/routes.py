"""Every REST route, built at start-up from the descriptor pool's google.api.http rules.

Discovery imports every generated `towerco.*` module, then walks each towerco.<domain>.v1
service. A method with an http rule gets one route per binding (the rule plus its
additional_bindings); client-streaming methods have no REST form and are skipped. The upstream
of a service is the short name of its package (towerco.sites.v1 -> "sites"), resolved through
the settings (TOWERCO_SITES_TARGET or host:7001) or an explicit target map.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field

from google.api import annotations_pb2, field_behavior_pb2, http_pb2
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from gateway.transcode import pattern
from gateway.transcode.request import resolve_field

F = FieldDescriptor


def declared_required(fd: FieldDescriptor) -> bool:
    """REQUIRED by google.api.field_behavior (the handler enforces it on create)."""
    return field_behavior_pb2.REQUIRED in fd.GetOptions().Extensions[field_behavior_pb2.field_behavior]


def validated_required(fd: FieldDescriptor) -> bool:
    """required by a towerco.validate rule (the interceptor enforces it on every request)."""
    from towerco.validate.v1 import validate_pb2

    opts = fd.GetOptions()
    return opts.HasExtension(validate_pb2.field) and opts.Extensions[validate_pb2.field].required


HTTP_METHODS = ("get", "put", "post", "delete", "patch")
TEST_PACKAGES = ("towerco.testing.",)
HTTP_BODY = "google.api.HttpBody"


@dataclass
class Route:
    service: ServiceDescriptor
    method: MethodDescriptor
    upstream: str  # short name: "sites"
    http_method: str  # "GET"
    template: pattern.Template
    body: str  # "", "*" or a top-level field name
    response_body: str
    request_cls: type[Message]
    response_cls: type[Message]
    server_streaming: bool
    binding_index: int  # 0 for the main rule, 1.. for additional_bindings
    grpc_path: str = ""
    path_fields: list[str] = field(default_factory=list)
    label: str = ""  # the metrics label: "GET /api/v1/sites/{site_id}"

    def __post_init__(self) -> None:
        self.grpc_path = f"/{self.service.full_name}/{self.method.name}"
        self.path_fields = [v.field_path for v in self.template.variables]
        self.label = f"{self.http_method} {self.template.text}"

    @property
    def operation_id(self) -> str:
        suffix = f"_{self.binding_index}" if self.binding_index else ""
        return f"{self.service.name}_{self.method.name}{suffix}"

    @property
    def http_body(self) -> bool:
        """The answer is raw bytes (google.api.HttpBody, whole or as response_body), not JSON.
        Such routes also take the bearer token from the access_token query parameter, as a
        browser following a download link cannot set headers."""
        desc = self.method.output_type
        if self.response_body:
            fd = desc.fields_by_name[self.response_body]
            desc = fd.message_type if fd.type == F.TYPE_MESSAGE and not fd.is_repeated else None
        return desc is not None and desc.full_name == HTTP_BODY

    @property
    def body_required(self) -> bool:
        """Must the request carry a JSON body? Yes, unless the whole message is the body and
        nothing in it is required (an empty body is then the empty message)."""
        if not self.body:
            return False
        if self.body != "*":
            return True
        return any(declared_required(fd) or validated_required(fd) for fd in self.method.input_type.fields)

    @property
    def resume_field(self) -> str:
        """The request field that resumes a stream ("after_sequence"), when the RPC has one."""
        if not self.server_streaming:
            return ""
        req = self.method.input_type.fields_by_name.get("after_sequence")
        resp = self.method.output_type.fields_by_name.get("sequence")
        return "after_sequence" if req is not None and resp is not None else ""


def import_generated(package: str = "towerco") -> None:
    """Import every generated *_pb2 module so its files are in the default descriptor pool."""
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        if info.name.endswith("_pb2"):
            importlib.import_module(info.name)


def short_name(service: ServiceDescriptor) -> str:
    parts = service.file.package.split(".")
    return parts[1] if len(parts) >= 3 and parts[0] == "towerco" else service.file.package


def discover_services(selection: tuple[str, ...] | None = None) -> list[ServiceDescriptor]:
    """towerco.*.v1 services that have http rules; `selection` names full or short names.

    With no selection every service except the test-only ones (towerco.testing.*) is exposed.
    """
    import_generated()
    pool = descriptor_pool.Default()
    found: list[ServiceDescriptor] = []
    names: set[str] = set()
    for name in sorted(_file_names()):
        fd = pool.FindFileByName(name)
        if not fd.package.startswith("towerco."):
            continue
        for svc in fd.services_by_name.values():
            if svc.full_name in names:
                continue
            if not any(_rule(m) is not None for m in svc.methods):
                continue
            short = short_name(svc)
            if selection is None:
                if svc.full_name.startswith(TEST_PACKAGES):
                    continue
            elif svc.full_name not in selection and short not in selection:
                continue
            names.add(svc.full_name)
            found.append(svc)
    return found


def _file_names() -> list[str]:
    import sys

    out = []
    for mod_name, mod in list(sys.modules.items()):
        if mod_name.startswith("towerco.") and mod_name.endswith("_pb2") and hasattr(mod, "DESCRIPTOR"):
            out.append(mod.DESCRIPTOR.name)
    return out


def _rule(method: MethodDescriptor) -> http_pb2.HttpRule | None:
    opts = method.GetOptions()
    if not opts.HasExtension(annotations_pb2.http):
        return None
    return opts.Extensions[annotations_pb2.http]


def _check_field_path(desc, dotted: str, where: str, *, scalar: bool) -> None:
    try:
        chain = resolve_field(desc, dotted)
    except KeyError:
        raise pattern.TemplateError(f"{where}: {desc.full_name} has no field {dotted!r}") from None
    if any(fd.is_repeated for fd in chain[:-1] if scalar) or (
        scalar and chain[-1].is_repeated
    ):
        raise pattern.TemplateError(f"{where}: {dotted!r} is repeated; a path variable must be a single value")


def build_routes(services: list[ServiceDescriptor]) -> list[Route]:
    routes: list[Route] = []
    for svc in services:
        for method in svc.methods:
            rule = _rule(method)
            if rule is None or method.client_streaming:
                continue
            bindings = [rule, *rule.additional_bindings]
            for index, binding in enumerate(bindings):
                kind = binding.WhichOneof("pattern")
                if kind is None or kind == "custom":
                    verb, text = (binding.custom.kind.upper(), binding.custom.path) if kind else ("", "")
                    if not text:
                        continue
                else:
                    verb, text = kind.upper(), getattr(binding, kind)
                where = f"{method.full_name} {verb} {text}"
                tpl = pattern.parse(text)
                for var in tpl.variables:
                    _check_field_path(method.input_type, var.field_path, where, scalar=True)
                if binding.body and binding.body != "*" and binding.body not in method.input_type.fields_by_name:
                    raise pattern.TemplateError(f"{where}: body {binding.body!r} is not a top-level field")
                if binding.response_body and binding.response_body not in method.output_type.fields_by_name:
                    raise pattern.TemplateError(f"{where}: response_body {binding.response_body!r} is not a field")
                routes.append(
                    Route(
                        service=svc,
                        method=method,
                        upstream=short_name(svc),
                        http_method=verb,
                        template=tpl,
                        body=binding.body,
                        response_body=binding.response_body,
                        request_cls=message_factory.GetMessageClass(method.input_type),
                        response_cls=message_factory.GetMessageClass(method.output_type),
                        server_streaming=method.server_streaming,
                        binding_index=index,
                    )
                )
    return routes


class Router:
    """Finds the route for (HTTP method, raw path); the most specific template wins.

    Templates are tried in specificity order, but only those that can match the path's number
    of segments: a template without `**` matches exactly its own count, one with `**` any count
    from its own less one. The candidate lists per count are built once here, so a request
    tries a handful of templates instead of every route of every service."""

    def __init__(self, routes: list[Route]):
        self.routes = sorted(routes, key=lambda r: r.template.specificity)
        seen: dict[tuple[str, str], Route] = {}
        for r in self.routes:
            key = (r.http_method, r.template.text)
            if key in seen:
                raise pattern.TemplateError(
                    f"{r.method.full_name} and {seen[key].method.full_name} both bind {key[0]} {key[1]}"
                )
            seen[key] = r
        longest = max((len(r.template.segments) for r in self.routes), default=0)
        self._by_count: list[list[Route]] = [
            [r for r in self.routes if _may_match(r.template, n)] for n in range(longest + 2)
        ]
        self._longer = [r for r in self.routes if r.template.dstar >= 0]  # paths beyond `longest`
        self._verbs = frozenset(r.template.verb for r in self.routes if r.template.verb)

    def candidates(self, raw_path: str) -> list[Route]:
        """The routes whose templates can match a path of this many segments, in order."""
        n = raw_path.count("/")  # "/a/b:verb" has 2 segments; a verb never holds a "/"
        return self._by_count[n] if n < len(self._by_count) else self._longer

    def match(self, http_method: str, raw_path: str) -> tuple[Route | None, dict[str, str], list[str]]:
        """(route, path bindings, allowed methods when only other methods match)."""
        allowed: list[str] = []
        # A path ending in a declared custom verb (".../X:feedback") is only for templates with a
        # verb: a template without one must not bind "X:feedback" as an id (and answer GET or
        # OPTIONS on a verb's path as if it were the plain resource).
        last = raw_path.rsplit("/", 1)[-1]
        verb_path = ":" in last and last.rsplit(":", 1)[1] in self._verbs
        for r in self.candidates(raw_path):
            if verb_path and not r.template.verb:
                continue
            params = r.template.match(raw_path)
            if params is None:
                continue
            if r.http_method == http_method:
                return r, params, []
            if r.http_method not in allowed:
                allowed.append(r.http_method)
        return None, {}, allowed


def _may_match(tpl: pattern.Template, n: int) -> bool:
    m = len(tpl.segments)
    return n >= m - 1 if tpl.dstar >= 0 else n == m
