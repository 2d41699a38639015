"""Update masks: the one home of how an Update RPC turns its `google.protobuf.FieldMask` (or, without
one, the fields it sets) into what changes. The Sites and Notifications services both use it.

An entity declares its `MaskRules`: each updatable path and the columns (or proto field paths)
it sets, and its id and output-only paths. Then, in an Update handler:

    paths = masks.request_paths(request, request.site, rules)   # the mask, or the set fields
    columns = masks.resolve_mask(rules, paths)                  # INVALID_ARGUMENT on a bad path
    merged = masks.apply_mask(current_row, incoming_row, columns)
    ... validate `merged` by the rules of Create, then store it

The contract states the same paths as `(towerco.validate.v1.field).mask_paths` on the request's
update_mask (checked by the validation interceptor and published in the OpenAPI); each service's
unit tests hold its rules equal to the declared paths.

Semantics (AIP-134): "*" is every updatable field; with no mask (or an empty one) the mask is
every field the caller set: over REST the gateway infers it from the JSON keys present in the
body, over gRPC it is every non-default field (`present_paths`), minus the id and output-only
ones. A path naming an id or output-only field, or no field at all, is refused with a violation
on `update_mask.paths[i]` that names the path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from mesh.errors import FieldViolation, InvalidArgument


@dataclass(frozen=True)
class MaskRules:
    """How the paths of an update mask map to columns for one entity."""

    entity: str  # for messages: "the <entity>"
    paths: Mapping[str, tuple[str, ...]]  # updatable path -> columns it sets
    immutable: frozenset[str]  # id and output-only paths (and their sub-paths)
    # why a path of `immutable` cannot be changed, when not because it is an id or output-only
    reasons: Mapping[str, str] = field(default_factory=dict)

    @property
    def top_level(self) -> list[str]:
        return [p for p in self.paths if "." not in p]


def _invalid(violations: list[tuple[str, str]]) -> InvalidArgument:
    field_, description = violations[0]
    return InvalidArgument(f"{field_} {description}", [FieldViolation(f, d) for f, d in violations])


def resolve_mask(rules: MaskRules, paths: Sequence[str], *, field: str = "update_mask") -> tuple[str, ...]:
    """The columns an update mask changes, in a stable order (each once).

    "*" means every updatable field. Id and output-only paths, unknown paths and an empty mask are
    refused with INVALID_ARGUMENT; each violation is on `update_mask.paths[i]` and names the path.
    """
    violations: list[tuple[str, str]] = []
    columns: list[str] = []
    if not paths:
        raise _invalid([(field, f"names no field of the {rules.entity} to change")])
    for i, raw in enumerate(paths):
        path = raw.strip()
        where = f"{field}.paths[{i}]"
        if path == "*":
            for top in rules.top_level:
                columns.extend(rules.paths[top])
            continue
        root = path.split(".", 1)[0]
        if path in rules.paths:
            columns.extend(rules.paths[path])
        elif root in rules.immutable:
            why = rules.reasons.get(root, "id or output-only field")
            violations.append((where, f"{path!r} cannot be changed ({why})"))
        else:
            violations.append((where, f"{path!r} is not a field of the {rules.entity} that can be changed"))
    if violations:
        raise _invalid(violations)
    return tuple(dict.fromkeys(columns))


def infer_mask(rules: MaskRules, present: Iterable[str]) -> list[str]:
    """The mask of an update sent without one: every present (non-default) field path, minus the
    id and output-only fields that identify the entity or that the server owns."""
    out: list[str] = []
    for path in present:
        if path.split(".", 1)[0] in rules.immutable:
            continue
        if path in rules.paths and path not in out:
            out.append(path)
    return out


def apply_mask(current: Mapping[str, Any], incoming: Mapping[str, Any], columns: Iterable[str]) -> dict[str, Any]:
    """The row after the update: the current row with the masked columns taken from `incoming`
    (neither is changed)."""
    merged = dict(current)
    for c in columns:
        merged[c] = incoming[c]
    return merged


def present_paths(msg: Message, prefix: str = "") -> list[str]:
    """Field-mask paths of every non-default field (sub-message fields as `a.b`; a present but
    empty sub-message as its own path; well-known types such as Timestamp are leaves)."""
    out: list[str] = []
    for fd, value in msg.ListFields():
        path = prefix + fd.name
        sub = fd.message_type if fd.type == FieldDescriptor.TYPE_MESSAGE else None
        if sub is not None and not fd.is_repeated and not sub.full_name.startswith("google.protobuf."):
            out.extend(present_paths(value, path + ".") or [path])
        else:
            out.append(path)
    return out


def request_paths(request: Message, entity: Message, rules: MaskRules) -> list[str]:
    """The request's update_mask, or (none / empty) every non-default field of the entity
    (`infer_mask` of `present_paths`)."""
    mask = getattr(request, "update_mask")  # noqa: B009 - every Update request has one
    if request.HasField("update_mask") and mask.paths:
        return list(mask.paths)
    return infer_mask(rules, present_paths(entity))
