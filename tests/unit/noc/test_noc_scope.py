"""The NOC's visibility rule (services/noc/scope.py): staff see all; a tenant viewer sees only
incidents and alarms of its tenant, and only its own tenancies in an incident's impact."""

from towerco.noc.v1 import noc_pb2

from mesh.auth import Identity
from services.noc.scope import scope_alarm, scope_incident

STAFF = Identity(subject="op", tenant="*", roles=frozenset({"noc_operator"}))
ACME = Identity(subject="a", tenant="acme", roles=frozenset({"tenant_viewer"}))
BETA = Identity(subject="b", tenant="beta", roles=frozenset({"tenant_viewer"}))


def _incident() -> noc_pb2.Incident:
    return noc_pb2.Incident(
        id="i1", tenant_ids=["acme", "gamma"],
        impacts=[noc_pb2.TenancyImpact(tenant_id="acme", tenancy_id="t-a"),
                 noc_pb2.TenancyImpact(tenant_id="gamma", tenancy_id="t-g")])


def test_staff_see_the_whole_incident():
    inc = _incident()
    assert scope_incident(inc, STAFF) is inc


def test_tenant_sees_only_its_own_tenancies_and_the_original_is_untouched():
    inc = _incident()
    got = scope_incident(inc, ACME)
    assert got is not None
    assert [i.tenancy_id for i in got.impacts] == ["t-a"]
    assert list(got.tenant_ids) == ["acme"]
    assert len(inc.impacts) == 2 and list(inc.tenant_ids) == ["acme", "gamma"]


def test_another_tenant_does_not_see_it():
    assert scope_incident(_incident(), BETA) is None


def test_alarms_follow_the_site_lease_and_per_tenant_alarms_their_tenant():
    shared = noc_pb2.Alarm(id="a1", tenant_ids=["acme", "beta"])
    assert scope_alarm(shared, STAFF) is shared
    got = scope_alarm(shared, ACME)
    assert got is not None and list(got.tenant_ids) == ["acme"]
    link = noc_pb2.Alarm(id="a2", tenant_ids=["acme", "beta"], tenant_id="beta")
    assert scope_alarm(link, ACME) is None
    assert scope_alarm(link, BETA) is not None
    assert scope_alarm(noc_pb2.Alarm(id="a3", tenant_ids=["gamma"]), ACME) is None
