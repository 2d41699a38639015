"""`towerco simulate`: a fleet of remote monitoring units sending telemetry through the ingest API.

    towerco simulate --sites 50 --interval 60 --duration 3600 --seed 7 --faults x2 --speed 0 --start=-1h

The physics and fault injection live in cli/fleet/model.py. Sites come from the Sites service
(the first N of the register; `--create` adds SIM-#### sites when there are fewer). Every step
sends each reporting site's samples with Ingest, in batches of at most 10,000 samples whose ids
are derived from the seed and the simulated time, so a re-run re-sends the same ids and stores
nothing twice. A failed batch is retried with the same id. Steps go out in order, so each site's
samples reach the stream in time order.

Time: simulated time starts at --start (default now) and advances --interval per step, --speed
times faster than the wall clock (0 = as fast as possible). It never runs ahead of the wall clock
(the API refuses samples from the future): a backfill from a past --start catches up with now and
then continues in real time. --duration bounds the simulated seconds (0 = until stopped). --rate
caps the samples sent per second of wall time (a steady background load for benchmarks).

Ground truth: every injected fault is written as one JSON line {"type", "site_id", "start",
"end", "detail"} (ISO 8601 UTC; end null when it outlasted the run) to --truth.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path

HELP = "Simulate a fleet of sites sending telemetry (physics, faults, ground truth; backfill or live)."

MAX_BATCH = 10_000
IN_FLIGHT = 4


def _start_time(raw: str | None, now: float) -> float:
    if not raw or raw == "now":
        return now
    m = re.fullmatch(r"-(\d+(?:\.\d+)?)([smhd])", raw.strip())
    if m:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return now - float(m.group(1)) * unit
    try:
        dt = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--start: use now, -6h, -2d or an ISO time, got {raw!r}") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sites", type=int, default=0, help="how many sites (default: every registered site)")
    parser.add_argument("--interval", type=float, default=15.0, help="seconds of simulated time between samples (15)")
    parser.add_argument("--duration", type=float, default=0.0, help="simulated seconds to run (0: until stopped)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (1)")
    parser.add_argument("--faults", default="", help="fault rates: type=rate,... | xN | none (see docs/telemetry.md)")
    parser.add_argument("--speed", type=float, default=1.0, help="times faster than real time; 0 = as fast as possible")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="at most this many samples per second of wall time (0: no cap)")
    parser.add_argument("--start", default="now",
                        help="simulated start: now, an ISO time, or relative as --start=-6h / --start=-2d (now)")
    parser.add_argument("--truth", default="", help="ground-truth JSONL (default $TOWERCO_HOME/simulator/faults.jsonl)")
    parser.add_argument("--site-prefix", default="", help="only sites whose id starts with this")
    parser.add_argument("--region", default="", help="only sites of this region")
    parser.add_argument("--create", action="store_true", help="create SIM-#### sites when the register has fewer than --sites")
    parser.add_argument("--target", default="", help="telemetry service address (default from settings)")
    parser.add_argument("--sites-target", default="", help="sites service address (default from settings)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    from cli.fleet.model import FaultSpecError, parse_faults

    if args.interval <= 0 or args.speed < 0 or args.duration < 0 or args.sites < 0 or args.rate < 0:
        print("towerco simulate: --interval must be > 0; --speed, --duration, --sites and --rate >= 0",
              file=sys.stderr)
        return 2
    try:
        rates = parse_faults(args.faults)
        start = _start_time(args.start, time.time())
    except (FaultSpecError, argparse.ArgumentTypeError) as exc:
        print(f"towerco simulate: {exc}", file=sys.stderr)
        return 2
    if start > time.time() + 1:
        print("towerco simulate: --start must not be in the future", file=sys.stderr)
        return 2
    return asyncio.run(_main(args, rates, start))


async def _list_sites(client, want: int, create: bool, quiet: bool, prefix: str = "", region: str = ""):
    import grpc
    from towerco.sites.v1 import sites_pb2

    deadline = time.monotonic() + 60
    while True:
        try:
            sites = []
            token = ""
            while True:
                reply = await client.sites.ListSites(
                    sites_pb2.ListSitesRequest(region=region, page={"size": 1000, "token": token}), timeout=30)
                sites.extend(s for s in reply.sites if s.id.startswith(prefix))
                token = reply.page.next_token
                if not token or (want and len(sites) >= want):
                    break
            break
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            await asyncio.sleep(1.0)
    if want and len(sites) < want and create:
        have = {s.id for s in sites}
        n = 1
        while len(sites) < want:
            sid = f"SIM-{n:04d}"
            n += 1
            if sid in have:
                continue
            site = sites_pb2.Site(id=sid, name=f"Simulated site {sid}", region=f"sim-region-{n % 4}",
                                  location={"latitude": -1.0 - n * 0.01, "longitude": 36.8 + n * 0.01},
                                  type=sites_pb2.SITE_TYPE_GREENFIELD, status=sites_pb2.SITE_STATUS_ACTIVE)
            try:
                reply = await client.sites.CreateSite(sites_pb2.CreateSiteRequest(site=site), timeout=10)
                sites.append(reply.site)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise
        if not quiet:
            print(f"simulate: register now has {len(sites)} sites", file=sys.stderr)
    return sites[:want] if want else sites


def _specs(sites, seed: int):
    from towerco.sites.v1 import sites_pb2

    from cli.fleet.model import SiteSpec, demo_specs

    base = {s.site_id: s for s in demo_specs([s.id for s in sites], seed=seed)}
    out = []
    for s in sites:
        d = base[s.id]
        p = s.power
        configured = p.ByteSize() > 0  # a register without power details gets plausible defaults
        out.append(SiteSpec(
            site_id=s.id,
            region=s.region or d.region,
            tenants=tuple(s.tenant_ids),
            has_grid=d.has_grid if p.grid == sites_pb2.GRID_CONNECTION_UNSPECIFIED else p.grid != sites_pb2.GRID_CONNECTION_NONE,
            has_dg=p.dg_capacity_kva > 0 if configured else True,
            tank_l=p.fuel_tank_l or d.tank_l,
            battery_ah=p.battery_bank_ah or d.battery_ah,
            base_load_a=d.base_load_a,
            dg_start_delay_s=p.dg_start_delay_s or d.dg_start_delay_s,
            ambient_offset_c=d.ambient_offset_c,
        ))
    return out


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


async def _main(args: argparse.Namespace, rates: dict[str, float], start: float) -> int:
    import grpc
    from towerco.telemetry.v1 import telemetry_pb2

    from cli.fleet.model import Fault, Fleet
    from mesh.auth import service_token
    from mesh.config import get_settings
    from sdk import Client

    settings = get_settings()
    token = service_token("simulator")
    truth_path = Path(args.truth) if args.truth else settings.home / "simulator" / "faults.jsonl"
    truth_path.parent.mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)

    sites_client = Client(args.sites_target or settings.target("sites"), token=token)
    tele = Client(args.target or settings.target("telemetry"), token=token, retry=False,
                  options=[("grpc.max_send_message_length", 16 * 1024 * 1024)])
    truth = open(truth_path, "a", encoding="utf-8")  # noqa: SIM115, ASYNC230 - local file, closed in finally
    faults = 0

    def on_fault(f: Fault) -> None:
        nonlocal faults
        faults += 1
        rec = {"type": f.type, "site_id": f.site_id, "start": _iso(f.start), "end": _iso(f.end)}
        if f.detail:
            rec["detail"] = f.detail
        truth.write(json.dumps(rec) + "\n")
        truth.flush()

    sent = accepted = rejected = 0
    try:
        sites = await _list_sites(sites_client, args.sites, args.create, args.quiet, args.site_prefix, args.region)
        if not sites:
            print("towerco simulate: the register has no sites (run `towerco seed`, or use --sites N --create)",
                  file=sys.stderr)
            return 1
        fleet = Fleet(_specs(sites, args.seed), seed=args.seed, start=start, rates=rates, on_fault=on_fault)
        # Batch ids are deterministic (a re-run stores nothing twice) but must differ between
        # fleets: the ingestor treats a known message id as a redelivery and skips it, so two
        # fleets sharing a seed and timestamps would silently lose each other's samples.
        fleet_key = zlib.crc32(",".join(sorted(s.id for s in sites)).encode()) & 0xFFFFFFFF
        if not args.quiet:
            print(f"simulate: {len(sites)} sites from {_iso(start)}, every {args.interval:g}s, "
                  f"speed {'max' if args.speed == 0 else f'{args.speed:g}x'}; ground truth -> {truth_path}",
                  file=sys.stderr)
        wall0 = time.monotonic()
        steps = 0
        last_report = time.monotonic()

        async def send(req) -> tuple[int, int]:
            delay = 0.2
            while True:
                try:
                    reply = await tele.telemetry.Ingest(req, timeout=30)
                    return reply.accepted, reply.rejected
                except grpc.aio.AioRpcError as exc:
                    if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                          grpc.StatusCode.RESOURCE_EXHAUSTED) or stop.is_set():
                        raise
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)

        while not stop.is_set() and (args.duration == 0 or fleet.t - start + args.interval <= args.duration + 1e-9):
            next_t = fleet.t + args.interval
            waits = [next_t - time.time()]  # never ahead of the wall clock
            if args.speed > 0:
                waits.append(wall0 + (next_t - start) / args.speed - time.monotonic())
            if args.rate > 0:  # the samples sent so far, at the cap, end at this wall time
                waits.append(wall0 + sent / args.rate - time.monotonic())
            wait = max(waits)
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=wait)
                if stop.is_set():
                    break
            samples = fleet.step(args.interval)
            steps += 1
            reqs = []
            for i in range(0, len(samples), MAX_BATCH):
                req = telemetry_pb2.IngestRequest(batch_id=f"sim-{fleet_key:08x}-{args.seed}-{int(fleet.t * 1000)}-{i // MAX_BATCH}")
                for sid, metric, tenant, t, value in samples[i:i + MAX_BATCH]:
                    s = req.samples.add(site_id=sid, metric=metric, tenant_id=tenant, value=value)
                    s.time.FromNanoseconds(int(t * 1e9))
                reqs.append(req)
            for i in range(0, len(reqs), IN_FLIGHT):
                for a, r in await asyncio.gather(*(send(q) for q in reqs[i:i + IN_FLIGHT])):
                    accepted += a
                    rejected += r
            sent += len(samples)
            if not args.quiet and time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                print(f"simulate: at {_iso(fleet.t)}: {sent} samples sent, {accepted} accepted, "
                      f"{rejected} rejected, {faults} fault records", file=sys.stderr)
        fleet.close()
    finally:
        truth.close()
        await tele.close()
        await sites_client.close()
    if not args.quiet:
        print(f"simulate: done: {sent} samples sent, {accepted} accepted, {rejected} rejected, "
              f"{faults} fault records in {truth_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    from cli.main import standalone

    standalone(sys.modules[__name__])
