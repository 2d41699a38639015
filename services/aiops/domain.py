"""AIOps service decisions, pure: what feedback does to a detector on a site, page cursors, and
who may see what."""

from __future__ import annotations

from collections.abc import Iterable

CONFIRMED, FALSE_POSITIVE, EXPECTED_BEHAVIOUR = 1, 2, 3
RULE_LAYER = 1
FACTOR_STEP = 1.25  # each false positive on a statistical/model detector raises its threshold by this
MAX_FACTOR = 4.0
DEFAULT_PAGE = 50


def adjustment_key(detector: str, metrics: Iterable[str], tenant_id: str = "") -> str:
    """The key the engine reads: per detector for rules and single-purpose detectors, per
    detector and metric for the baseline (its anomalies are per metric)."""
    if detector == "stat.baseline":
        return f"{detector}|{next(iter(metrics), '')}"
    return detector


def adjust(kind: int, layer: int, factor: float, suppressed: bool) -> tuple[float, bool]:
    """The new (threshold factor, suppressed) of a site-detector after a piece of feedback.

    * false positive or expected behaviour on a rule: the rule is suppressed for that site until
      reviewed (a CONFIRMED feedback on one of its anomalies lifts the suppression);
    * false positive on a statistical or model detector: its threshold for that site (and metric)
      is raised by FACTOR_STEP, at most MAX_FACTOR; expected behaviour raises it the same way;
    * confirmed: a rule's suppression is lifted; a raised threshold steps back down by FACTOR_STEP
      (never below 1)."""
    if kind in (FALSE_POSITIVE, EXPECTED_BEHAVIOUR):
        if layer == RULE_LAYER:
            return factor, True
        return min(factor * FACTOR_STEP, MAX_FACTOR), suppressed
    if kind == CONFIRMED:
        return max(1.0, factor / FACTOR_STEP), False
    return factor, suppressed


def visible(tenant_scope: str | None, tenant_ids: Iterable[str], tenant_id: str = "") -> bool:
    """A row is visible to staff (scope None) and to the tenants leasing its site; a row about one
    tenant (its `tenant_id` set: that tenant's link on a shared site) only to that tenant."""
    if tenant_scope is None:
        return True
    return tenant_scope in set(tenant_ids) and (not tenant_id or tenant_id == tenant_scope)



def page_size(size: int) -> int:
    return size or DEFAULT_PAGE
