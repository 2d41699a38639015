"""The AIOps service's pure rules: feedback -> adjustment, cursors, visibility; and its list of
detectors matches the engine's."""

from __future__ import annotations

import pytest

from services.aiops import domain
from services.aiops.servicer import DETECTORS
from workers.aiops_engine import domain as engine


def test_false_positive_on_a_rule_suppresses_it_until_confirmed():
    factor, suppressed = domain.adjust(domain.FALSE_POSITIVE, domain.RULE_LAYER, 1.0, False)
    assert (factor, suppressed) == (1.0, True)
    assert domain.adjust(domain.CONFIRMED, domain.RULE_LAYER, factor, suppressed) == (1.0, False)
    assert domain.adjust(domain.EXPECTED_BEHAVIOUR, domain.RULE_LAYER, 1.0, False) == (1.0, True)


def test_false_positive_on_statistics_raises_the_threshold_bounded():
    f, s = 1.0, False
    seen = []
    for _ in range(10):
        f, s = domain.adjust(domain.FALSE_POSITIVE, 2, f, s)
        seen.append(f)
    assert seen[0] == pytest.approx(1.25) and seen[-1] == domain.MAX_FACTOR and not s
    assert seen == sorted(seen)
    assert domain.adjust(domain.CONFIRMED, 2, 1.25, False)[0] == pytest.approx(1.0)
    assert domain.adjust(domain.CONFIRMED, 2, 1.0, False)[0] == 1.0


def test_adjustment_keys_match_what_the_engine_reads():
    assert domain.adjustment_key("stat.baseline", ["cabinet_temp_c"]) == "stat.baseline|cabinet_temp_c"
    assert domain.adjustment_key("rule.door_open", ["door_open"]) == "rule.door_open"
    assert domain.adjustment_key("rule.tenant_link_down", ["tenant_link_up"], "acme") == "rule.tenant_link_down"




def test_visibility():
    assert domain.visible(None, [])
    assert domain.visible("acme", ["acme", "beta"])
    assert not domain.visible("acme", ["beta"])


def test_service_lists_the_engines_detectors():
    listed = {n: layer for n, layer, _ in DETECTORS}
    for name, layer, _ in engine.detectors():
        if layer:  # forecasts are predictions, not anomaly detectors
            assert listed.get(name) == layer, name


def test_an_anomaly_about_one_tenant_is_visible_only_to_it() -> None:
    """A tenant's link down on a shared site is that tenant's: the co-tenant never sees it."""
    from services.aiops.domain import visible

    assert visible(None, ["acme", "beta"], "beta")  # staff
    assert visible("beta", ["acme", "beta"], "beta")
    assert not visible("acme", ["acme", "beta"], "beta")
    assert visible("acme", ["acme", "beta"], "")  # a site-wide anomaly: every tenant of the site
    assert not visible("gamma", ["acme", "beta"], "")
