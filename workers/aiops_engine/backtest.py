"""`towerco aiops backtest IN.csv`: the univariate streaming detector over any CSV, strictly causal.

Each row's score uses only the rows before it (the seasonal robust baseline of domain.py, fed
one row at a time; no look-ahead, no global normalisation, no parameters to give): any unit,
scale and sampling interval. Rows whose value is missing or not a number are written with an
empty value and score 0 and never learned from (a gap, never a zero).

Output: every input row as `timestamp,value,anomaly_score,anomaly` (score in [0, 1], flag 0/1).

`--site-file F.csv --truth faults.jsonl` instead replays a simulator dump (columns
time,site_id,metric,tenant_id,value, in time order) through the full multivariate engine and
scores it against the ground truth (workers/aiops_engine/evaluate.py).
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import TextIO

from workers.aiops_engine import domain, evaluate


def parse_time(raw: str) -> float | None:
    """ISO 8601 (with or without zone: UTC assumed), 'YYYY-MM-DD HH:MM:SS', or epoch seconds /
    milliseconds."""
    s = raw.strip()
    if not s:
        return None
    try:
        x = float(s)
    except ValueError:
        pass
    else:
        if not math.isfinite(x):
            return None
        return x / 1000.0 if abs(x) > 1e11 else x
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        for fmt in ("%m/%d/%Y %H:%M:%S", "%m/%d/%Y %H:%M", "%d/%m/%Y %H:%M:%S", "%Y/%m/%d %H:%M:%S"):
            try:
                dt = datetime.strptime(s, fmt)
                break
            except ValueError:
                continue
        else:
            return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def parse_value(raw: str) -> float | None:
    try:
        x = float(raw.strip())
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def pick_columns(header: list[str], rows: list[list[str]], ts_col: str | None, val_col: str | None) -> tuple[int, int]:
    """The timestamp column (named, or the first whose values parse as times but are not plain
    small numbers) and the value column (named, or the first other numeric column)."""
    def index(name: str) -> int:
        if name in header:
            return header.index(name)
        raise ValueError(f"no column {name!r} (columns: {', '.join(header)})")

    def share(i: int, fn) -> float:
        vals = [r[i] for r in rows if i < len(r) and r[i].strip()]
        return sum(fn(v) is not None for v in vals) / len(vals) if vals else 0.0

    ti = index(ts_col) if ts_col else None
    if ti is None:
        named = [i for i, h in enumerate(header) if h.strip().lower() in ("timestamp", "time", "date", "datetime", "ts")]
        textual = [i for i in range(len(header)) if share(i, parse_time) > 0.9 and share(i, parse_value) < 0.5]
        ti = (named or textual or [0])[0]
    vi = index(val_col) if val_col else None
    if vi is None:
        numeric = [i for i in range(len(header)) if i != ti and share(i, parse_value) > 0.5]
        if not numeric:
            raise ValueError("no numeric column found: give --value-column")
        named = [i for i in numeric if header[i].strip().lower() == "value"]
        vi = (named or numeric)[0]
    return ti, vi


def detect(points: Iterable[tuple[float | None, float | None]], params: domain.Params | None = None
           ) -> Iterator[tuple[float, bool]]:
    """(score, anomaly) for each (time, value), causally."""
    p = params or domain.Params()
    b = domain.new_baseline()
    last_t = None
    for i, (t, v) in enumerate(points):
        if v is None:
            yield 0.0, False
            continue
        tt = t if t is not None else (last_t + 1.0 if last_t is not None else float(i))
        last_t = tt
        s = domain.baseline_step(b, tt, v, p)
        yield s.score, s.flag


def backtest(inp: TextIO, out: TextIO, *, ts_col: str | None = None, val_col: str | None = None) -> dict:
    reader = csv.reader(inp)
    header = next(reader, None)
    if header is None:
        raise ValueError("empty file")
    rows = list(reader)
    ti, vi = pick_columns(header, rows[:200], ts_col, val_col)
    pts = [(parse_time(r[ti]) if ti < len(r) else None, parse_value(r[vi]) if vi < len(r) else None) for r in rows]
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["timestamp", "value", "anomaly_score", "anomaly"])
    flagged = 0
    for r, (_, v), (score, flag) in zip(rows, pts, detect(pts), strict=True):
        flagged += flag
        w.writerow([r[ti] if ti < len(r) else "", "" if v is None else r[vi].strip(), f"{score:.6f}", int(flag)])
    return {"rows": len(rows), "anomalies": flagged, "timestamp_column": header[ti], "value_column": header[vi]}


def replay_site_file(path: str, truth_path: str | None) -> dict:
    """Replay a simulator dump through the engine's every layer but the models; score it."""
    eng = domain.Engine()
    states: dict[str, domain.SiteState] = {}
    cfg = {}
    detections: list[evaluate.Detection] = []
    forecasts: dict[str, list] = {}
    first = last = None
    pending: dict[str, list] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for rec in csv.DictReader(f):
            t = parse_time(rec["time"])
            v = parse_value(rec["value"])
            if t is None or v is None:
                continue
            first = t if first is None else first
            sid = rec["site_id"]
            if last is not None and t != last:
                _flush(eng, states, cfg, pending, detections, forecasts, last)
            last = t
            pending.setdefault(sid, []).append((t, rec["metric"], rec.get("tenant_id", ""), v))
    if last is not None:
        _flush(eng, states, cfg, pending, detections, forecasts, last)
    result: dict = {"sites": len(states), "detections": len(detections)}
    if truth_path:
        events = load_truth(truth_path)
        days = ((last or 0) - (first or 0)) / 86400.0
        result.update(evaluate.score(events, detections, site_days=max(days, 1e-9) * max(len(states), 1),
                                     run_end=last or 0.0))
        result["forecasts"] = evaluate.forecast_leads(events, [
            evaluate.Forecast(s, p[0], p[1], p[2]) for s, ps in forecasts.items() for p in ps])
    return result


def _flush(eng, states, cfg, pending, detections, forecasts, now) -> None:
    for sid, samples in pending.items():
        st = states.setdefault(sid, domain.SiteState())
        c = cfg.setdefault(sid, domain.SiteCfg(sid, dg_capacity_kva=20.0, battery_bank_ah=600.0, fuel_tank_l=1000.0))
        tr, pr = eng.process(st, c, samples)
        detections += [evaluate.Detection(sid, x.detector, x.time, x.start) for x in tr if x.kind == "open"]
        for x in pr:
            if x.kind == "open":
                forecasts.setdefault(sid, []).append([x.predict_time, x.expected_time, None])
            elif forecasts.get(sid):
                forecasts[sid][-1][2] = x.time
    for sid, st in states.items():
        detections += [evaluate.Detection(sid, x.detector, x.time, x.start)
                       for x in eng.tick(st, cfg[sid], now) if x.kind == "open"]
    pending.clear()


def load_truth(path: str) -> list[evaluate.Event]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            start = parse_time(r["start"]) if isinstance(r["start"], str) else r["start"]
            end = None if r.get("end") is None else (parse_time(r["end"]) if isinstance(r["end"], str) else r["end"])
            out.append(evaluate.Event(r["type"], r["site_id"], start, end))
    return out


def main(args) -> int:
    if args.site_file:
        print(json.dumps(replay_site_file(args.site_file, args.truth or None), indent=2))
        return 0
    if not args.input:
        print("towerco aiops backtest: give IN.csv (or --site-file)", file=sys.stderr)
        return 2
    with open(args.input, newline="", encoding="utf-8-sig") as inp:
        if args.output and args.output != "-":
            with open(args.output, "w", newline="", encoding="utf-8") as out:
                summary = backtest(inp, out, ts_col=args.timestamp_column, val_col=args.value_column)
        else:
            summary = backtest(inp, sys.stdout, ts_col=args.timestamp_column, val_col=args.value_column)
    print(f"backtest: {summary['rows']} rows ({summary['timestamp_column']}, {summary['value_column']}), "
          f"{summary['anomalies']} flagged", file=sys.stderr)
    return 0
