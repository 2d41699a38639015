"""Write sdk/generated.py: a typed async and a typed blocking client class for every service in a
FileDescriptorSet (gen/towerco/descriptor_set.binpb), so a new service or RPC in proto/ reaches the
SDK by `make gen` alone. Run by scripts/gen.py; tests/unit/test_contracts.py fails on drift.

Naming: the service `towerco.<domain>.v1.<Name>Service` becomes `Client.<domain>` (when its
package holds more than one service: `Client.<name in snake case>`). Services of the test-only
`towerco.testing` packages are left out. An RPC whose request has `towerco.common.v1.PageRequest
page`, and whose response has `towerco.common.v1.PageResponse page` and exactly one other repeated
message field, is walked by `list_all(request)`.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import descriptor_pb2

PAGE_REQUEST = ".towerco.common.v1.PageRequest"
PAGE_RESPONSE = ".towerco.common.v1.PageResponse"
SKIPPED_PACKAGES = ("towerco.testing",)
OPTS = "timeout: float | None = None, metadata: Metadata | None = None, wait_for_ready: bool | None = None"
PASS = "timeout=timeout, metadata=metadata, wait_for_ready=wait_for_ready"


@dataclass
class Rpc:
    name: str
    request: str   # python expression of the type, e.g. sites_pb2.GetSiteRequest
    request_full: str
    response: str
    client_streaming: bool
    server_streaming: bool
    doc: str
    item: str = ""         # python type of a paginated RPC's items
    items_field: str = ""


@dataclass
class Service:
    full_name: str
    attr: str
    cls: str
    stub_module: str
    doc: str
    rpcs: list[Rpc] = field(default_factory=list)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _doc(text: str) -> str:
    text = " ".join(line.strip() for line in text.strip().splitlines()).replace("\\", "\\\\")
    return text.replace('"""', "'''")


def _comments(fd: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    return {tuple(loc.path): loc.leading_comments for loc in fd.source_code_info.location if loc.leading_comments}


def collect(fds: descriptor_pb2.FileDescriptorSet) -> tuple[list[Service], dict[str, str]]:
    """The services, and the imports they need (module path -> alias)."""
    types: dict[str, tuple[str, descriptor_pb2.DescriptorProto]] = {}  # full type -> (python expr, message)
    modules: dict[str, str] = {}  # proto file -> python module

    def walk(prefix: str, pyprefix: str, messages, module: str) -> None:
        for m in messages:
            full = f"{prefix}.{m.name}"
            types[full] = (f"{pyprefix}{m.name}", m)
            walk(full, f"{pyprefix}{m.name}.", m.nested_type, module)

    for fd in fds.file:
        module = fd.name[:-len(".proto")].replace("/", ".").replace("-", "_") + "_pb2"
        modules[fd.name] = module
        alias = module.rsplit(".", 1)[1]
        walk(f".{fd.package}", f"{alias}.", fd.message_type, module)

    used: dict[str, str] = {}
    services: list[Service] = []
    for fd in fds.file:
        if not fd.service or fd.package.startswith(SKIPPED_PACKAGES):
            continue
        module = modules[fd.name]
        notes = _comments(fd)
        domain = fd.package.split(".")[1] if fd.package.count(".") >= 1 else fd.package
        for si, svc in enumerate(fd.service):
            attr = domain if len(fd.service) == 1 else _snake(svc.name.removesuffix("Service"))
            attr = attr + "_" if keyword.iskeyword(attr) else attr
            grpc_module = module + "_grpc"
            used[grpc_module] = grpc_module.rsplit(".", 1)[1]
            out = Service(f"{fd.package}.{svc.name}", attr, svc.name, grpc_module.rsplit(".", 1)[1],
                          _doc(notes.get((6, si), "")))
            for mi, m in enumerate(svc.method):
                req_py, req_msg = types[m.input_type]
                resp_py, resp_msg = types[m.output_type]
                for t in (m.input_type, m.output_type):
                    mod = _module_of(t, fds, modules)
                    used[mod] = mod.rsplit(".", 1)[1]
                rpc = Rpc(m.name, req_py, m.input_type[1:], resp_py, m.client_streaming, m.server_streaming,
                          _doc(notes.get((6, si, 2, mi), "")))
                item = _paged_item(req_msg, resp_msg)
                if item is not None and not (m.client_streaming or m.server_streaming):
                    rpc.items_field, item_type = item
                    rpc.item = types[item_type][0]
                    mod = _module_of(item_type, fds, modules)
                    used[mod] = mod.rsplit(".", 1)[1]
                out.rpcs.append(rpc)
            services.append(out)
    if len(set(used.values())) != len(used):
        raise SystemExit(f"two generated modules share a name: {sorted(used)}")
    return sorted(services, key=lambda s: s.attr), used


def _module_of(full_type: str, fds: descriptor_pb2.FileDescriptorSet, modules: dict[str, str]) -> str:
    for fd in fds.file:
        prefix = f".{fd.package}."
        if full_type.startswith(prefix):
            top = full_type[len(prefix):].split(".")[0]
            if any(m.name == top for m in fd.message_type):
                return modules[fd.name]
    raise SystemExit(f"no file defines {full_type}")


def _paged_item(req: descriptor_pb2.DescriptorProto, resp: descriptor_pb2.DescriptorProto) -> tuple[str, str] | None:
    if not any(f.name == "page" and f.type_name == PAGE_REQUEST for f in req.field):
        return None
    if not any(f.name == "page" and f.type_name == PAGE_RESPONSE for f in resp.field):
        return None
    repeated = [f for f in resp.field if f.label == f.LABEL_REPEATED and f.type == f.TYPE_MESSAGE]
    if len(repeated) != 1:
        return None
    return repeated[0].name, repeated[0].type_name


def _async_method(r: Rpc) -> list[str]:
    doc = [f'        """{r.doc}"""'] if r.doc else []
    if r.client_streaming:
        arg = f"requests: AsyncIterable[{r.request}] | Iterable[{r.request}]"
    else:
        arg = f"request: {r.request}"
    name = "requests" if r.client_streaming else "request"
    if r.server_streaming:
        return [f"    def {r.name}(self, {arg}, *, {OPTS}) -> AsyncIterator[{r.response}]:", *doc,
                f'        return self._server_stream("{r.name}", {name}, _options({PASS}))', ""]
    helper = "_client_stream" if r.client_streaming else "_unary"
    return [f"    async def {r.name}(self, {arg}, *, {OPTS}) -> {r.response}:", *doc,
            f'        return cast({r.response}, await self.{helper}("{r.name}", {name}, _options({PASS})))', ""]


def _blocking_method(r: Rpc) -> list[str]:
    doc = [f'        """{r.doc}"""'] if r.doc else []
    if r.client_streaming:
        arg = f"requests: Iterable[{r.request}]"
    else:
        arg = f"request: {r.request}"
    name = "requests" if r.client_streaming else "request"
    if r.server_streaming:
        return [f"    def {r.name}(self, {arg}, *, {OPTS}) -> Iterator[{r.response}]:", *doc,
                f"        return self._iterate(self._service.{r.name}({name}, {PASS}))", ""]
    return [f"    def {r.name}(self, {arg}, *, {OPTS}) -> {r.response}:", *doc,
            f"        return self._call(self._service.{r.name}({name}, {PASS}))", ""]


def _list_all(paged: list[Rpc], blocking: bool) -> list[str]:
    if not paged:
        return []
    it = "Iterator" if blocking else "AsyncIterator"
    opts = f"page_size: int = 0, {OPTS}"
    body = (f"        return self._iterate(self._service.list_all(request, page_size=page_size, {PASS}))"
            if blocking else f"        return self._list_all(request, page_size, _options({PASS}))")
    doc = ('        """Every item of a paginated List RPC, page after page (the RPC is picked by the '
           'request\'s type; page_size 0: the server\'s default)."""')
    out: list[str] = []
    if len(paged) == 1:
        r = paged[0]
        return [f"    def list_all(self, request: {r.request}, *, {opts}) -> {it}[{r.item}]:", doc, body, ""]
    for r in paged:
        out += ["    @overload", f"    def list_all(self, request: {r.request}, *, {opts}) -> {it}[{r.item}]: ...", ""]
    union = " | ".join(r.request for r in paged)
    out += [f"    def list_all(self, request: {union}, *, {opts}) -> {it}[Any]:", doc, body, ""]
    return out


def _imports(used: dict[str, str]) -> list[str]:
    by_package: dict[str, list[str]] = {}
    for mod, alias in used.items():
        by_package.setdefault(mod.rsplit(".", 1)[0], []).append(alias)
    return [f"from {pkg} import {', '.join(sorted(names))}" for pkg, names in sorted(by_package.items())]


def render(fds: descriptor_pb2.FileDescriptorSet) -> str:
    services, used = collect(fds)
    lines = [
        '"""Typed clients of every Towerco service: GENERATED by scripts/gen.py (scripts/gen_clients.py)',
        'from the descriptors of proto/; do not edit, run `make gen`."""',
        "",
        "# ruff: noqa: E501, ASYNC109  (timeout is the call's gRPC deadline, sent to the server)",
        "from __future__ import annotations",
        "",
        "from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence",
        "from typing import Any, cast, overload",
        "",
        *_imports(used),
        "",
        "from sdk.typed import AsyncService, BlockingService, Page",
        "",
        "Metadata = Sequence[tuple[str, str | bytes]]",
        "",
        "",
        "def _options(timeout: float | None, metadata: Metadata | None, wait_for_ready: bool | None) -> dict[str, Any]:",
        "    out: dict[str, Any] = {}",
        "    if timeout is not None:",
        '        out["timeout"] = timeout',
        "    if metadata is not None:",
        '        out["metadata"] = metadata',
        "    if wait_for_ready is not None:",
        '        out["wait_for_ready"] = wait_for_ready',
        "    return out",
        "",
    ]
    for s in services:
        paged = [r for r in s.rpcs if r.item]
        lines += ["", f"class {s.cls}(AsyncService):", f'    """{s.full_name}' + (f": {s.doc}" if s.doc else "") + '"""',
                  "", f'    SERVICE = "{s.full_name}"', f"    STUB = {s.stub_module}.{s.cls}Stub"]
        if paged:
            lines.append("    PAGES = {")
            lines += [f'        "{r.request_full}": Page("{r.name}", "{r.items_field}"),' for r in paged]
            lines.append("    }")
        lines.append("")
        for r in s.rpcs:
            lines += _async_method(r)
        lines += _list_all(paged, blocking=False)
        while lines[-1] == "":
            lines.pop()
        lines += ["", "", f"class {s.cls}Blocking(BlockingService):",
                  f'    """{s.full_name}, blocking: each call waits for its result."""', "",
                  f"    _service: {s.cls}", ""]
        for r in s.rpcs:
            lines += _blocking_method(r)
        lines += _list_all(paged, blocking=True)
        while lines[-1] == "":
            lines.pop()
        lines.append("")
    lines += ["", "class AsyncServices:", '    """The typed async client of every service, by attribute."""', ""]
    lines += [f"    {s.attr}: {s.cls}" for s in services]
    lines += ["", "", "class BlockingServices:", '    """The typed blocking client of every service, by attribute."""', ""]
    lines += [f"    {s.attr}: {s.cls}Blocking" for s in services]
    lines += ["", "", "# attribute -> (async class, blocking class)",
              "SERVICES: dict[str, tuple[type[AsyncService], type[BlockingService]]] = {"]
    lines += [f'    "{s.attr}": ({s.cls}, {s.cls}Blocking),' for s in services]
    lines += ["}", ""]
    return "\n".join(lines)


def write(descriptor_set: Path, out: Path) -> None:
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(descriptor_set.read_bytes())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(fds))


if __name__ == "__main__":
    import sys

    root = Path(__file__).resolve().parent.parent
    write(root / "gen/towerco/descriptor_set.binpb", Path(sys.argv[1]) if len(sys.argv) > 1 else root / "sdk/generated.py")
