"""Random, mostly hostile requests (seeded, reproducible): the service answers each with OK or a
clear client error - never INTERNAL/UNKNOWN - and what it accepts reads back unchanged."""

from __future__ import annotations

import math
import random

import grpc
from google.protobuf import field_mask_pb2
from towerco.sites.v1 import sites_pb2 as pb

CLIENT_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.NOT_FOUND,
                 grpc.StatusCode.FAILED_PRECONDITION}
TEXTS = ["", " ", "x", "Nairobi", "ÄÖÜ ñ 漢字 🙂", "a\x00b", "%_\\", "'; DROP TABLE sites.sites; --", "A" * 201,
         "r" * 64, "r" * 65]
NUMBERS = [0.0, -0.0, 1.5, -1.0, 90.0, 90.0001, -180.0, 180.5, 1e308, math.nan, math.inf, -math.inf, 2000.0, 50000.0]
PATHS = ["name", "region", "location", "location.latitude", "power", "power.solar_kwp", "status", "type", "id",
         "create_time", "tenant_ids", "nope", "power.nope", "*", ""]


def random_site(rng: random.Random, uniq: str, i: int) -> pb.Site:
    if rng.random() < 0.4:  # a valid site with at most one hostile field
        site = pb.Site(id=f"FZ{i}-{uniq}", name=rng.choice(["Ok", "ÄÖÜ ñ 漢字 🙂", "%_\\"]), region="fuzz",
                       location={"latitude": rng.uniform(-90, 90), "longitude": rng.uniform(-180, 180)})
        if rng.random() < 0.5:
            setattr(site, rng.choice(["name", "region"]), rng.choice(TEXTS))
        return site
    site = pb.Site(
        id=rng.choice([f"FZ{i}-{uniq}", f"fz{i}", "", "AB", "A" * 33, f"FZ{i}-{uniq}"]),
        name=rng.choice(TEXTS), region=rng.choice(TEXTS),
        type=rng.choice([0, 1, 2, 3, 4, 5, 99, -1]), status=rng.choice([0, 1, 2, 3, 4, 7]),
    )
    if rng.random() < 0.8:
        site.location.latitude = rng.choice(NUMBERS)
        site.location.longitude = rng.choice(NUMBERS)
    if rng.random() < 0.7:
        site.power.grid = rng.choice([0, 1, 2, 3, 42])
        for field in ("dg_capacity_kva", "fuel_tank_l", "battery_bank_ah", "battery_voltage_v", "solar_kwp",
                      "rectifier_capacity_kw", "dg_start_delay_s"):
            if rng.random() < 0.5:
                setattr(site.power, field, rng.choice(NUMBERS))
    if rng.random() < 0.2:
        site.tenant_ids.append(rng.choice(TEXTS))
    if rng.random() < 0.2:
        site.create_time.seconds = rng.randint(0, 2_000_000_000)
    return site


async def test_random_creates_and_updates_never_break_the_service(sites, uniq):
    rng = random.Random(20261125)
    st, admin = sites.stub, sites.md("admin")
    accepted = 0
    for i in range(150):
        site = random_site(rng, uniq, i)
        try:
            got = (await st.CreateSite(pb.CreateSiteRequest(site=site), metadata=admin)).site
        except grpc.aio.AioRpcError as err:
            assert err.code() in CLIENT_ERRORS, (err.code(), err.details(), site)
            continue
        accepted += 1
        again = (await st.GetSite(pb.GetSiteRequest(site_id=got.id), metadata=admin)).site
        assert again == got
        assert got.name == site.name and got.location.latitude == site.location.latitude
        # and a random PATCH of it
        patch = random_site(rng, uniq, i)
        patch.id = got.id
        mask = field_mask_pb2.FieldMask(paths=rng.sample(PATHS, rng.randint(0, 3)))
        try:
            await st.UpdateSite(pb.UpdateSiteRequest(site=patch, update_mask=mask), metadata=admin)
        except grpc.aio.AioRpcError as err:
            assert err.code() in CLIENT_ERRORS, (err.code(), err.details(), patch, mask)
    assert accepted >= 20  # the generator does produce valid sites too
