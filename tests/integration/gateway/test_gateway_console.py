"""The web console as the gateway serves it, over real HTTP: the page at `/`, every asset it
loads (and every module those import) local and served with the right type, the CSP on each,
and the API, OpenAPI and docs untouched by it. The browser tests (tests/e2e/console/) drive
the same files in Chromium."""

from __future__ import annotations

import re
from pathlib import Path

from gateway import console

ROOT = Path(console.ROOT)  # type: ignore[arg-type]
IMPORT = re.compile(r"""^\s*import\s[^;]*?from\s+["'](\.{1,2}/[^"']+)["']""", re.M)
ASSET = re.compile(r"""(?:src|href)="(/[^"]+)\"""")
EXTERNAL = re.compile(r"https?://(?!www\.w3\.org/2000/svg)")


def _assets_of_index() -> list[str]:
    return ASSET.findall((ROOT / "index.html").read_text())


def _modules() -> list[Path]:
    return sorted((ROOT / "js").glob("*.js"))


async def test_the_page_and_its_assets_are_served_locally_with_the_csp(make_gateway) -> None:
    async with make_gateway() as (client, _s, _app, _base, _srv):
        r = await client.get("/")  # no token needed: the page asks for one
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/html")
        assert r.headers["content-security-policy"] == console.CSP
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["cache-control"] == "no-cache"
        assert r.text == (ROOT / "index.html").read_text()
        assets = _assets_of_index()
        assert "/console/js/app.js" in assets and "/console/vendor/uplot/uPlot.iife.min.js" in assets
        for path in assets:
            a = await client.get(path)
            assert a.status_code == 200, path
            assert a.headers["content-security-policy"] == console.CSP, path
            kind = a.headers["content-type"]
            want = {".js": "javascript", ".css": "text/css", ".svg": "image/svg+xml"}[Path(path).suffix]
            assert want in kind, (path, kind)
        head = await client.head("/")
        assert head.status_code == 200


def test_the_policy_allows_only_this_origin() -> None:
    rules = dict(part.strip().split(" ", 1) for part in console.CSP.split(";"))
    assert rules["default-src"] == "'self'"
    for directive in ("script-src", "style-src", "connect-src", "font-src"):
        assert rules[directive] == "'self'", directive
    assert "unsafe" not in console.CSP and "*" not in console.CSP and "http" not in console.CSP
    assert rules["object-src"] == "'none'" and rules["frame-ancestors"] == "'none'"


async def test_every_module_import_resolves_and_nothing_comes_from_elsewhere(make_gateway) -> None:
    async with make_gateway() as (client, _s, _app, _base, _srv):
        for module in _modules():
            text = module.read_text()
            assert not EXTERNAL.search(text), f"{module.name} names an outside URL"
            assert "innerHTML" not in text and "eval(" not in text, f"{module.name} parses strings as code or HTML"
            for rel in IMPORT.findall(text):
                target = (module.parent / rel).resolve()
                assert target.is_file(), f"{module.name} imports missing {rel}"
                url = "/console/" + target.relative_to(ROOT).as_posix()
                r = await client.get(url)
                assert r.status_code == 200 and "javascript" in r.headers["content-type"], url
        index = (ROOT / "index.html").read_text()
        assert "<script>" not in index and " style=" not in index  # nothing inline: the CSP forbids it
        assert not EXTERNAL.search(index)
        assert (ROOT / "vendor" / "uplot" / "LICENSE").read_text().startswith("The MIT License")


async def test_the_console_leaves_api_openapi_docs_and_errors_alone(make_gateway, token) -> None:
    async with make_gateway() as (client, _s, _app, _base, _srv):
        for path in ("/console/js/nope.js", "/console/../gateway/app.py", "/console/%2e%2e/console.py"):
            r = await client.get(path)
            assert r.status_code == 404, path
        r = await client.get("/nope")  # not the console: the API's own 404, a google.rpc.Status
        assert r.status_code == 404 and r.json()["code"] == 5
        assert "content-security-policy" not in r.headers
        r = await client.get("/v1/shelves/s1/books/b1")  # an API route still wants its token
        assert r.status_code == 401
        r = await client.get("/v1/shelves/s1/books/b1", headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        spec = (await client.get("/api/v1/openapi.json")).json()
        assert spec["paths"] and not any(p == "/" or p.startswith("/console") for p in spec["paths"])
        docs = await client.get("/api/v1/docs")
        assert docs.status_code == 200 and "swagger-ui" in docs.text
        assert "content-security-policy" not in docs.headers  # Swagger UI's page keeps its inline script
