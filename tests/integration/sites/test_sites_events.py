"""Every change to the register leaves as an event on JetStream (subject towerco.sites.>), through
the outbox, after its transaction commits; a refused write publishes nothing. Also: grpcurl works
against the running service (reflection, describe, a call with a bearer token)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import grpc
import nats
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy
from sites_support import new_site
from towerco.events.v1 import events_pb2
from towerco.sites.v1 import sites_pb2 as pb

GRPCURL = Path(__file__).resolve().parents[3] / ".venv" / "bin" / "grpcurl"


async def next_envelope(sub, wait_s: float = 10.0) -> tuple[events_pb2.Envelope, dict]:
    msg = await sub.next_msg(timeout=wait_s)
    env = events_pb2.Envelope()
    env.ParseFromString(msg.data)
    return env, dict(msg.headers or {})


async def test_changes_are_published_after_commit_with_the_envelope(sites, stack, uniq):
    nc = await nats.connect(stack.nats_url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe("towerco.sites.>", ordered_consumer=True,
                                 config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW))
        st, admin = sites.stub, sites.md("admin")
        tenant, sid = f"ev-{uniq.lower()}", f"EV-{uniq}"
        await st.CreateTenant(pb.CreateTenantRequest(tenant=pb.Tenant(id=tenant, name="Ev")), metadata=admin)
        await st.CreateSite(pb.CreateSiteRequest(site=new_site(sid)), metadata=admin)
        with pytest.raises(grpc.aio.AioRpcError):  # refused: rolled back, publishes nothing
            await st.CreateSite(pb.CreateSiteRequest(site=new_site(sid)), metadata=admin)
        await st.CreateTenancy(pb.CreateTenancyRequest(tenancy=pb.Tenancy(site_id=sid, tenant_id=tenant)),
                               metadata=admin)
        await st.UpdateSite(pb.UpdateSiteRequest(site=pb.Site(id=sid, name="After")), metadata=admin)
        await st.DeleteSite(pb.DeleteSiteRequest(site_id=sid), metadata=admin)

        seen = []
        while len(seen) < 5:
            env, headers = await next_envelope(sub)
            change = pb.SitesChange()
            assert env.payload.Unpack(change)
            entity = change.WhichOneof("entity")
            key = getattr(change, entity).id if entity != "tenancy" else change.tenancy.site_id
            if key not in (sid, tenant):
                continue  # another test's change
            assert headers.get("Nats-Msg-Id") == env.id
            assert env.subject == env.type and env.source == "sites" and env.sequence > 0
            seen.append((env.subject, list(env.tenant_ids), change.kind, env.sequence))
        subjects = [s[0] for s in seen]
        assert subjects == ["towerco.sites.tenant.created", "towerco.sites.site.created",
                            "towerco.sites.tenancy.created", "towerco.sites.site.updated",
                            "towerco.sites.site.deleted"]
        assert [s[1] for s in seen] == [[tenant], [], [tenant], [tenant], [tenant]]
        assert [s[2] for s in seen] == [pb.CHANGE_KIND_CREATED] * 3 + [pb.CHANGE_KIND_UPDATED, pb.CHANGE_KIND_DELETED]
        seqs = [s[3] for s in seen]
        assert seqs == sorted(seqs)
        await sub.unsubscribe()
    finally:
        await nc.close()


async def _grpcurl(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(GRPCURL), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HOME": os.environ.get("HOME", "/tmp")})
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.mark.skipif(not GRPCURL.exists(), reason="grpcurl wrapper not installed")
async def test_grpcurl_lists_describes_and_calls(sites, uniq):
    sid = f"CURL-{uniq}"
    await sites.stub.CreateSite(pb.CreateSiteRequest(site=new_site(sid)), metadata=sites.md("admin"))
    code, out, err = await _grpcurl("-plaintext", sites.target, "list")
    assert code == 0, err
    assert "towerco.sites.v1.SitesService" in out.split()
    code, out, err = await _grpcurl("-plaintext", sites.target, "describe", "towerco.sites.v1.SitesService")
    assert code == 0, err
    assert "rpc GetSite ( .towerco.sites.v1.GetSiteRequest )" in out and "WatchChanges" in out
    token = sites.token("viewer")
    code, out, err = await _grpcurl("-plaintext", "-H", f"authorization: Bearer {token}",
                                    "-d", json.dumps({"site_id": sid}), sites.target,
                                    "towerco.sites.v1.SitesService/GetSite")
    assert code == 0, err
    body = json.loads(out)
    assert body["site"]["id"] == sid and body["site"]["type"] == "SITE_TYPE_GREENFIELD"
    power = body["site"]["power"]
    assert power.get("battery_voltage_v", power.get("batteryVoltageV")) == 48
    # a PATCH with a field mask (grpcurl takes the FieldMask as an object with paths)
    admin = sites.token("admin")
    code, out, err = await _grpcurl("-plaintext", "-H", f"authorization: Bearer {admin}", "-d", json.dumps(
        {"site": {"id": sid, "name": "ignored", "power": {"solar_kwp": 3}}, "update_mask": {"paths": ["power.solar_kwp"]}}),
        sites.target, "towerco.sites.v1.SitesService/UpdateSite")
    assert code == 0, err
    body = json.loads(out)
    assert body["site"]["name"] == f"Site {sid}" and body["site"]["power"]["solar_kwp"] == 3
    # without a token: UNAUTHENTICATED, reported by grpcurl
    code, out, err = await _grpcurl("-plaintext", "-d", json.dumps({"site_id": sid}), sites.target,
                                    "towerco.sites.v1.SitesService/GetSite")
    assert code != 0 and "Unauthenticated" in err
