"""What of an incident a caller may see: the one rule for every NOC read path (Get, List, the
alarms of an incident, WatchIncidents and its replay).

Staff see every incident whole. A tenant viewer sees an incident only when it impacts one of its
tenant's tenancies, and then only its own tenancies in the impact and its own tenant in
`tenant_ids`; any other incident is invisible (NOT_FOUND on Get, absent from lists and the feed)."""

from __future__ import annotations

from towerco.noc.v1 import noc_pb2

from mesh.auth import Identity, can_see
from mesh.incident_scope import incident_for_tenant


def scope_incident(incident: noc_pb2.Incident, identity: Identity) -> noc_pb2.Incident | None:
    """The incident as `identity` may see it, or None when it may not see it at all. Never
    changes `incident` (a scoped copy is returned for tenant callers)."""
    if identity.is_staff:
        return incident
    if not can_see(identity, incident.tenant_ids):
        return None
    return incident_for_tenant(incident, identity.tenant)  # the rule itself lives in mesh (the notifier uses it)


def scope_alarm(alarm: noc_pb2.Alarm, identity: Identity) -> noc_pb2.Alarm | None:
    """The alarm as `identity` may see it (its site leased to the caller's tenant), or None. A
    per-tenant alarm (tenant_id set) of another tenant is invisible even on a shared site."""
    if identity.is_staff:
        return alarm
    if not can_see(identity, alarm.tenant_ids):
        return None
    if alarm.tenant_id and alarm.tenant_id != identity.tenant:
        return None
    out = noc_pb2.Alarm()
    out.CopyFrom(alarm)
    del out.tenant_ids[:]
    out.tenant_ids.append(identity.tenant)
    return out
