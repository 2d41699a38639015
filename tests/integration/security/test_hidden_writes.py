"""The non-GET RPCs that act on one tenant's thing (exports, feedback, file deletion and links,
NOC actions, notification channels and their updates, and the towerco's notification configuration):
a tenant viewer naming another tenant's thing gets NOT_FOUND, over gRPC and REST alike — the same
answer as for a thing that does not exist, so neither existence nor content leaks. The GET reads
are the isolation matrix's."""

from __future__ import annotations

import uuid

import grpc
import httpx
from google.protobuf import field_mask_pb2
from towerco.aiops.v1 import aiops_pb2, aiops_pb2_grpc
from towerco.bi.v1 import bi_pb2, bi_pb2_grpc
from towerco.files.v1 import files_pb2, files_pb2_grpc
from towerco.noc.v1 import noc_pb2, noc_pb2_grpc
from towerco.notifications.v1 import notifications_pb2, notifications_pb2_grpc

ACME = ("tenant_viewer", "acme")


async def _grpc_code(call) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_a_tenant_acting_on_another_tenants_thing_gets_not_found(sec) -> None:
    md = sec.md(*ACME)
    beta_file = sec.files[("SEC-B", "beta")]
    beta_anomaly = sec.anomalies["SEC-B"]
    beta_incident = sec.incidents["SEC-B"]
    beta_own = sec.incidents["SEC-AB/beta"]  # on a site acme leases too, but beta's alone
    beta_channel = sec.notify[("channel", "beta")]
    missing = str(uuid.uuid4())
    async with grpc.aio.insecure_channel(sec.targets["bi"]) as bi_ch, \
            grpc.aio.insecure_channel(sec.targets["aiops"]) as ai_ch, \
            grpc.aio.insecure_channel(sec.targets["files"]) as fi_ch, \
            grpc.aio.insecure_channel(sec.targets["noc"]) as noc_ch, \
            grpc.aio.insecure_channel(sec.targets["notifications"]) as nt_ch:
        bi = bi_pb2_grpc.BiServiceStub(bi_ch)
        aiops = aiops_pb2_grpc.AiopsServiceStub(ai_ch)
        files = files_pb2_grpc.FilesServiceStub(fi_ch)
        noc = noc_pb2_grpc.NocServiceStub(noc_ch)
        notify = notifications_pb2_grpc.NotificationsServiceStub(nt_ch)
        fmt = bi_pb2.EXPORT_FORMAT_CSV
        feedback = aiops_pb2.FEEDBACK_KIND_FALSE_POSITIVE
        cases = {
            "export beta's statement": bi.ExportSlaStatement(bi_pb2.ExportSlaStatementRequest(
                tenant_id="beta", month=sec.month, format=fmt), metadata=md),
            "feedback on beta's anomaly": aiops.RecordFeedback(aiops_pb2.RecordFeedbackRequest(
                anomaly_id=beta_anomaly, kind=feedback), metadata=md),
            "feedback on a missing anomaly": aiops.RecordFeedback(aiops_pb2.RecordFeedbackRequest(
                anomaly_id=missing, kind=feedback), metadata=md),
            "delete beta's file": files.DeleteFile(files_pb2.DeleteFileRequest(file_id=beta_file), metadata=md),
            "link to beta's file": files.CreateDownloadLink(files_pb2.CreateDownloadLinkRequest(file_id=beta_file),
                                                            metadata=md),
            "acknowledge beta's incident": noc.AcknowledgeIncident(noc_pb2.AcknowledgeIncidentRequest(
                incident_id=beta_incident), metadata=md),
            "comment on beta's own incident on a shared site": noc.CommentIncident(noc_pb2.CommentIncidentRequest(
                incident_id=beta_own, text="x"), metadata=md),
            "merge beta's incident into acme's": noc.MergeIncidents(noc_pb2.MergeIncidentsRequest(
                incident_id=sec.incidents["SEC-A"], source_incident_ids=[beta_incident]), metadata=md),
            "delete beta's channel": notify.DeleteChannel(notifications_pb2.DeleteChannelRequest(
                channel_id=beta_channel), metadata=md),
            "test-send to beta's channel": notify.TestSend(notifications_pb2.TestSendRequest(
                channel_id=beta_channel), metadata=md),
            "update beta's channel": notify.UpdateChannel(notifications_pb2.UpdateChannelRequest(
                channel=notifications_pb2.Channel(id=beta_channel, name="x")), metadata=md),
            "update beta's channel with a bad mask": notify.UpdateChannel(notifications_pb2.UpdateChannelRequest(
                channel=notifications_pb2.Channel(id=beta_channel, webhook_url="https://x.test/"),
                update_mask=field_mask_pb2.FieldMask(paths=["webhook_url"])), metadata=md),
            "update a route": notify.UpdateRoute(notifications_pb2.UpdateRouteRequest(
                route=notifications_pb2.Route(id=sec.notify[("route", "acme")], name="x")), metadata=md),
            "update an escalation policy": notify.UpdateEscalationPolicy(
                notifications_pb2.UpdateEscalationPolicyRequest(policy=notifications_pb2.EscalationPolicy(
                    id=sec.notify[("policy", "acme")], name="x")), metadata=md),
            "update a schedule": notify.UpdateSchedule(notifications_pb2.UpdateScheduleRequest(
                schedule=notifications_pb2.Schedule(id=sec.notify[("schedule", "acme")], name="x")), metadata=md),
        }
        got = {name: await _grpc_code(call) for name, call in cases.items()}
    assert got == dict.fromkeys(cases, grpc.StatusCode.NOT_FOUND), got
    headers = {"authorization": f"Bearer {sec.token(*ACME)}", "content-type": "application/json"}
    async with httpx.AsyncClient(base_url=sec.base, headers=headers, timeout=30) as client:
        rest = {
            "export": await client.post(f"/api/v1/tenants/beta/statements/{sec.month}:export",
                                        json={"format": "EXPORT_FORMAT_CSV"}),
            "feedback": await client.post(f"/api/v1/anomalies/{beta_anomaly}:feedback",
                                          json={"kind": "FEEDBACK_KIND_FALSE_POSITIVE"}),
            "delete file": await client.delete(f"/api/v1/files/{beta_file}"),
            "acknowledge": await client.post(f"/api/v1/incidents/{beta_incident}:acknowledge", json={}),
            "patch beta's channel": await client.patch(f"/api/v1/notification-channels/{beta_channel}",
                                                       json={"name": "x"}),
            "patch a route": await client.patch(f"/api/v1/notification-routes/{sec.notify[('route', 'acme')]}",
                                                json={"name": "x"}),
            "patch a schedule": await client.patch(
                f"/api/v1/oncall-schedules/{sec.notify[('schedule', 'acme')]}", json={"name": "x"}),
        }
    assert {k: r.status_code for k, r in rest.items()} == dict.fromkeys(rest, 404), {k: r.text for k, r in rest.items()}
    assert all(r.json()["code"] == 5 for r in rest.values())  # google.rpc.Status NOT_FOUND
    # and the thing is still there for its own tenant (nothing was done to it)
    async with grpc.aio.insecure_channel(sec.targets["files"]) as fi_ch:
        own = await files_pb2_grpc.FilesServiceStub(fi_ch).GetFile(
            files_pb2.GetFileRequest(file_id=beta_file), metadata=sec.md("tenant_viewer", "beta"))
    assert own.file.id == beta_file
    async with grpc.aio.insecure_channel(sec.targets["notifications"]) as nt_ch:
        kept = await notifications_pb2_grpc.NotificationsServiceStub(nt_ch).GetChannel(
            notifications_pb2.GetChannelRequest(channel_id=beta_channel), metadata=sec.md("tenant_viewer", "beta"))
    assert kept.channel.name != "x"


async def test_a_visible_thing_the_role_may_not_change_is_permission_denied(sec) -> None:
    """403 is only for what the caller sees: acme's viewer deleting acme's own file."""
    own_file = sec.files[("SEC-A", "acme")]
    async with grpc.aio.insecure_channel(sec.targets["files"]) as ch:
        code = await _grpc_code(files_pb2_grpc.FilesServiceStub(ch).DeleteFile(
            files_pb2.DeleteFileRequest(file_id=own_file), metadata=sec.md(*ACME)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # acme's own notification channel: it reads it, it may not update it
    async with grpc.aio.insecure_channel(sec.targets["notifications"]) as ch:
        code = await _grpc_code(notifications_pb2_grpc.NotificationsServiceStub(ch).UpdateChannel(
            notifications_pb2.UpdateChannelRequest(channel=notifications_pb2.Channel(
                id=sec.notify[("channel", "acme")], name="x")), metadata=sec.md(*ACME)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # and an incident impacting acme: it reads it, it may not acknowledge it
    async with grpc.aio.insecure_channel(sec.targets["noc"]) as ch:
        noc = noc_pb2_grpc.NocServiceStub(ch)
        seen = await noc.GetIncident(noc_pb2.GetIncidentRequest(incident_id=sec.incidents["SEC-A"]),
                                     metadata=sec.md(*ACME))
        code = await _grpc_code(noc.AcknowledgeIncident(noc_pb2.AcknowledgeIncidentRequest(
            incident_id=seen.incident.id), metadata=sec.md(*ACME)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
