"""The one rule for what of a NOC incident a tenant may see, as a pure function over the proto, so
every floor can apply it: the NOC's read paths (services/noc/scope.py applies it for a caller) and
the notifier (a tenant's channel receives only its tenant's incidents, scoped).

A tenant sees an incident only when it impacts one of its tenancies (its id is in `tenant_ids`),
and then only its own tenancies in `impacts` and only itself in `tenant_ids`."""

from __future__ import annotations

from towerco.noc.v1 import noc_pb2


def incident_for_tenant(incident: noc_pb2.Incident, tenant: str) -> noc_pb2.Incident | None:
    """`incident` as `tenant` may see it, or None when it may not see it at all. Never changes
    `incident` (a scoped copy is returned)."""
    if not tenant or tenant not in incident.tenant_ids:
        return None
    out = noc_pb2.Incident()
    out.CopyFrom(incident)
    mine = [i for i in incident.impacts if i.tenant_id == tenant]
    del out.impacts[:]
    out.impacts.extend(mine)
    del out.tenant_ids[:]
    out.tenant_ids.append(tenant)
    return out
