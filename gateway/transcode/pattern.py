"""google.api.http path templates: parse, match, and render for OpenAPI.

Grammar (google/api/http.proto):

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb     = ":" LITERAL ;

`{x}` is `{x=*}`. A variable bound to one segment is percent-decoded completely; one that spans
several segments (contains `**` or more than one segment) keeps `%2F` encoded, as the spec says,
so a slash inside a segment is not confused with a separator. Matching works on the raw
(still percent-encoded) request path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_LITERAL = re.compile(r"^[A-Za-z0-9\-._~%!$&'()+,;=@]+$")


class TemplateError(ValueError):
    """A path template that does not follow the google.api.http grammar."""


LITERAL, STAR, DSTAR = "lit", "*", "**"


@dataclass(frozen=True)
class Variable:
    field_path: str  # "site.id"
    start: int  # index of its first segment in Template.segments
    end: int  # exclusive
    multi: bool  # spans more than one segment or uses **

    @property
    def param_name(self) -> str:
        """The OpenAPI parameter name: "site.id" -> "site_id"."""
        return self.field_path.replace(".", "_")


@dataclass
class Template:
    text: str
    segments: list[tuple[str, str]]  # (kind, literal text)
    verb: str
    variables: list[Variable] = field(default_factory=list)
    dstar: int = -1  # index of the ** segment, -1 when none

    @property
    def specificity(self) -> tuple:
        """Sort key: more literal segments first, wildcards later, ** last."""
        ranks = tuple({LITERAL: 0, STAR: 1, DSTAR: 2}[k] for k, _ in self.segments)
        return (self.dstar >= 0, ranks, -len(self.segments), self.verb == "")

    def match(self, raw_path: str) -> dict[str, str] | None:
        """Bindings {field_path: value} when raw_path (percent-encoded, no query) matches."""
        if not raw_path.startswith("/"):
            return None
        body = raw_path[1:]
        if self.verb:
            suffix = ":" + self.verb
            if not body.endswith(suffix):
                return None
            body = body[: -len(suffix)]
        parts = body.split("/")
        segs = self.segments
        n, m = len(parts), len(segs)
        if self.dstar < 0:
            if n != m:
                return None
            offset_after = 0
        else:
            if n < m - 1:
                return None
            offset_after = n - m  # how many extra parts ** swallows beyond one
        # literal and single-wildcard checks
        for i, (kind, text) in enumerate(segs):
            if kind == DSTAR:
                continue
            j = i if (self.dstar < 0 or i < self.dstar) else i + offset_after
            part = parts[j]
            if kind == LITERAL:
                if part != text and unquote(part) != text:
                    return None
            elif part == "":
                return None
        if self.dstar >= 0:
            # ** matches zero or more segments; an empty remainder is fine ("/files/")
            pass
        out: dict[str, str] = {}
        for var in self.variables:
            start = var.start if (self.dstar < 0 or var.start <= self.dstar) else var.start + offset_after
            end = var.end if (self.dstar < 0 or var.end <= self.dstar) else var.end + offset_after
            chunk = parts[start:end]
            if var.multi:
                out[var.field_path] = "/".join(_unquote_keep_slash(p) for p in chunk)
            else:
                out[var.field_path] = unquote(chunk[0])
        return out

    def openapi_path(self) -> str:
        """The path in OpenAPI form: each variable as {field_path} (dots become underscores, since
        many OpenAPI tools read "{a.b}" as attribute access), wildcards outside as-is."""
        out: list[str] = []
        i = 0
        starts = {v.start: v for v in self.variables}
        while i < len(self.segments):
            var = starts.get(i)
            if var is not None:
                out.append("{" + var.param_name + "}")
                i = var.end
                continue
            kind, text = self.segments[i]
            out.append(text if kind == LITERAL else kind)
            i += 1
        path = "/" + "/".join(out)
        return path + (":" + self.verb if self.verb else "")

    def variable_pattern(self, var: Variable) -> str:
        """The sub-template a variable must match, e.g. "shelves/*" (for docs)."""
        return "/".join(t if k == LITERAL else k for k, t in self.segments[var.start : var.end])


def _unquote_keep_slash(part: str) -> str:
    return "%2F".join(unquote(p) for p in re.split("%2[Ff]", part))


def parse(text: str) -> Template:
    if not text.startswith("/"):
        raise TemplateError(f"{text!r}: a template starts with '/'")
    # find the verb: a ':' outside braces after the last '/' outside braces
    depth = 0
    last_slash = 0
    colon = -1
    for i, ch in enumerate(text):
        if ch == "{":
            if depth:
                raise TemplateError(f"{text!r}: nested braces")
            depth = 1
        elif ch == "}":
            if not depth:
                raise TemplateError(f"{text!r}: unbalanced braces")
            depth = 0
        elif depth == 0 and ch == "/":
            last_slash = i
            colon = -1
        elif depth == 0 and ch == ":" and colon < 0 and i > last_slash:
            colon = i
    if depth:
        raise TemplateError(f"{text!r}: unbalanced braces")
    verb = ""
    path = text[1:]
    if colon >= 0:
        verb = text[colon + 1 :]
        path = text[1:colon]
        if not verb or not _LITERAL.match(verb):
            raise TemplateError(f"{text!r}: bad verb {verb!r}")
    tpl = Template(text=text, segments=[], verb=verb)
    _parse_segments(tpl, path, text, top=True)
    stars = [i for i, (k, _) in enumerate(tpl.segments) if k == DSTAR]
    if len(stars) > 1:
        raise TemplateError(f"{text!r}: at most one '**'")
    tpl.dstar = stars[0] if stars else -1
    seen: set[str] = set()
    for v in tpl.variables:
        if v.field_path in seen:
            raise TemplateError(f"{text!r}: variable {v.field_path} bound twice")
        seen.add(v.field_path)
    return tpl


def _split_top(path: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in path:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "/" and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _parse_segments(tpl: Template, path: str, text: str, top: bool) -> None:
    for seg in _split_top(path):
        if seg == "":
            raise TemplateError(f"{text!r}: empty segment")
        if seg.startswith("{"):
            if not top:
                raise TemplateError(f"{text!r}: variables cannot nest")
            if not seg.endswith("}"):
                raise TemplateError(f"{text!r}: bad variable {seg!r}")
            inner = seg[1:-1]
            name, eq, sub = inner.partition("=")
            if not _IDENT.match(name):
                raise TemplateError(f"{text!r}: bad field path {name!r}")
            start = len(tpl.segments)
            _parse_segments(tpl, sub if eq else "*", text, top=False)
            end = len(tpl.segments)
            multi = (end - start) > 1 or any(k == DSTAR for k, _ in tpl.segments[start:end])
            tpl.variables.append(Variable(name, start, end, multi))
        elif seg == "**":
            tpl.segments.append((DSTAR, "**"))
        elif seg == "*":
            tpl.segments.append((STAR, "*"))
        else:
            if "{" in seg or "}" in seg or not _LITERAL.match(seg):
                raise TemplateError(f"{text!r}: bad literal segment {seg!r}")
            tpl.segments.append((LITERAL, unquote(seg)))
