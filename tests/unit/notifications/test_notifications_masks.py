"""The pure parts of the Notifications service's Update RPCs: the mask rules (equal to the paths
the contract declares), the merge of a stored message with a request's masked fields, and the
rules a merged entity is held to (those of its Create)."""

from __future__ import annotations

import pytest
from towerco.notifications.v1 import notifications_pb2 as pb
from towerco.validate.v1 import validate_pb2

from mesh import masks
from mesh.errors import InvalidArgument
from services.notifications import domain
from services.notifications import servicer as sv

REQUESTS = {"channel": pb.UpdateChannelRequest, "route": pb.UpdateRouteRequest,
            "policy": pb.UpdateEscalationPolicyRequest, "schedule": pb.UpdateScheduleRequest}


@pytest.mark.parametrize("entity", sorted(REQUESTS))
def test_declared_mask_paths_are_the_domain_masks(entity):
    """The OpenAPI and the interceptor use the declared paths; the service resolves the same."""
    fd = REQUESTS[entity].DESCRIPTOR.fields_by_name["update_mask"]
    declared = list(fd.GetOptions().Extensions[validate_pb2.field].mask_paths)
    assert declared == list(domain.MASKS[entity].paths)
    # every declared path names a field of the entity (a typo would be refused by nobody)
    body = REQUESTS[entity].DESCRIPTOR.fields[0].message_type
    for path in declared:
        d = body
        for part in path.split("."):
            assert part in d.fields_by_name, (entity, path)
            d = d.fields_by_name[part].message_type


def test_channel_kind_tenant_and_secret_flag_cannot_change():
    with pytest.raises(InvalidArgument) as err:
        masks.resolve_mask(domain.CHANNEL_MASK, ["name", "kind", "tenant_id", "has_signing_secret", "id"])
    got = {v.field: v.description for v in err.value.violations}
    assert got == {
        "update_mask.paths[1]": "'kind' cannot be changed (a channel never changes kind: create another)",
        "update_mask.paths[2]": "'tenant_id' cannot be changed (a channel never moves to another tenant: create "
                                "another)",
        "update_mask.paths[3]": "'has_signing_secret' cannot be changed (id or output-only field)",
        "update_mask.paths[4]": "'id' cannot be changed (id or output-only field)",
    }
    assert masks.resolve_mask(domain.CHANNEL_MASK, ["signing_secret"]) == ("signing_secret",)  # write-only, settable


def test_schedule_overrides_are_left_to_add_override():
    with pytest.raises(InvalidArgument) as err:
        masks.resolve_mask(domain.SCHEDULE_MASK, ["overrides"])
    assert "overrides are added with AddOverride" in err.value.violations[0].description
    sched = pb.Schedule(id="x", name="n", overrides=[pb.Override(member=pb.OnCallMember(name="o"))])
    assert masks.infer_mask(domain.SCHEDULE_MASK, masks.present_paths(sched)) == ["name"]


def test_star_is_every_top_level_field():
    assert set(masks.resolve_mask(domain.ROUTE_MASK, ["*"])) == {
        "name", "position", "match", "continue_matching", "channel_ids", "escalation_policy_id", "group_by",
        "group_wait_seconds", "group_interval_seconds", "repeat_interval_seconds", "send_resolved"}
    assert masks.resolve_mask(domain.POLICY_MASK, ["*"]) == ("name", "steps", "repeat")


def test_no_mask_over_grpc_is_the_fields_set():
    req = pb.UpdateRouteRequest(route=pb.Route(id="r-1", name="new", match=pb.IncidentMatcher(regions=["a"]),
                                               create_time={"seconds": 5}))
    assert masks.request_paths(req, req.route, domain.ROUTE_MASK) == ["name", "match.regions"]


def stored_route() -> pb.Route:
    return pb.Route(name="old", position=3, channel_ids=["c1", "c2"], group_by=["region"], group_wait_seconds=30,
                    match=pb.IncidentMatcher(regions=["r1"], min_severity=2, site_ids=["S-1"]), send_resolved=True)


def test_merge_replaces_only_the_masked_fields():
    current = stored_route()
    incoming = pb.Route(name="ignored", channel_ids=["c3"], match=pb.IncidentMatcher(regions=["r9"]))
    sv._merge(current, incoming, masks.resolve_mask(domain.ROUTE_MASK, ["channel_ids", "match.regions"]))
    assert list(current.channel_ids) == ["c3"]  # a list is replaced, not appended to
    assert list(current.match.regions) == ["r9"] and current.match.min_severity == 2  # the rest of match stays
    assert list(current.match.site_ids) == ["S-1"]
    assert current.name == "old" and current.position == 3 and current.send_resolved


def test_merge_of_a_whole_message_or_an_unset_field_clears_it():
    current = stored_route()
    sv._merge(current, pb.Route(match=pb.IncidentMatcher(kinds=[1])),
              masks.resolve_mask(domain.ROUTE_MASK, ["match", "match.regions", "send_resolved", "group_by"]))
    assert current.match == pb.IncidentMatcher(kinds=[1])  # "match" covers "match.regions"
    assert not current.send_resolved and not current.group_by
    assert current.group_wait_seconds == 30


def test_missing_names_what_create_needs():
    assert domain.missing("route", name="  ") == [("route.name", "is required")]
    assert domain.missing("policy", name="p", steps=0) == [("policy.steps", "is required")]
    assert domain.missing("schedule", name="s", rotations=1) == []


def test_a_merged_channel_is_held_to_the_rules_of_create():
    hook = pb.Channel(name="h", kind=pb.CHANNEL_KIND_WEBHOOK, webhook_url="https://x.test/h",
                      signing_secret="s" * 16)
    assert sv._channel_problems(hook, declared=True) == []
    bad_url = pb.Channel(name="h", kind=pb.CHANNEL_KIND_WEBHOOK, webhook_url="ftp://x", signing_secret="s" * 16)
    assert [f for f, _ in sv._channel_problems(bad_url, declared=True)] == ["channel.webhook_url"]
    blank = pb.Channel(kind=pb.CHANNEL_KIND_EMAIL, email_address="a@b", signing_secret="s" * 16)
    assert {f for f, _ in sv._channel_problems(blank, declared=True)} == {"channel.name", "channel.signing_secret"}
    short = pb.Channel(name="h", kind=pb.CHANNEL_KIND_WEBHOOK, webhook_url="https://x.test/h", signing_secret="short")
    assert [f for f, _ in sv._channel_problems(short)] == ["channel.signing_secret"]
