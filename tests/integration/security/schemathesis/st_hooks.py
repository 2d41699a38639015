"""Schemathesis hooks: teach the generator the two request rules JSON Schema cannot say.

Both are read from the OpenAPI document itself, not written per operation here:
- `x-towerco-ordered` (an operation's list of {lesser, greater, in}): the gateway's declared
  field orderings (towerco.validate.v1.message `ordered`, e.g. TimeRange end after start). A
  generated pair of timestamps in the wrong order is put right (greater = lesser + 1 h) so more
  fuzzed cases get past validation into the handlers; wrong orders are covered by the suite's
  own tests.
- page tokens are opaque: only a token the server issued is valid. A generated `page.token`
  within its length limit is dropped (longer ones stay: they test the maxLength rule).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import schemathesis

_TOKEN_MAX = 512


def _pairs(ctx, where: str) -> list[dict]:
    op = getattr(ctx, "operation", None)
    definition = getattr(getattr(op, "definition", None), "raw", None) or {}
    return [p for p in definition.get("x-towerco-ordered", []) if p.get("in") == where]


def _parse(value):
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None


def _order(getter, setter, pairs: list[dict]) -> None:
    for p in pairs:
        lo, hi = _parse(getter(p["lesser"])), _parse(getter(p["greater"]))
        if lo is None or hi is None or lo.tzinfo is None or hi.tzinfo is None:
            continue
        try:
            if hi <= lo:
                setter(p["greater"], (lo + timedelta(hours=1)).isoformat().replace("+00:00", "Z"))
        except OverflowError:
            continue


@schemathesis.hook
def map_query(ctx, query):
    if not query:
        return query
    token = query.get("page.token")
    if isinstance(token, str) and len(token) <= _TOKEN_MAX:
        del query["page.token"]
    _order(query.get, query.__setitem__, _pairs(ctx, "query"))
    return query


def _get(body: dict, dotted: str):
    node = body
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(body: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = body
    for part in parents:
        node = node[part]
    node[last] = value


@schemathesis.hook
def map_body(ctx, body):
    if isinstance(body, dict):
        _order(lambda k: _get(body, k), lambda k, v: _set(body, k, v), _pairs(ctx, "body"))
    return body
