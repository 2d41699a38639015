"""`towerco aiops backtest`: any CSV in, every row out with a score and a flag, causally."""

from __future__ import annotations

import io
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from workers.aiops_engine import backtest

ROOT = Path(__file__).resolve().parents[3]


def series_csv(n=3000, *, header="timestamp,value", fmt="iso", step_s=300, jump_at=2000, scale=1.0):
    rng = random.Random(4)
    lines = [header]
    for i in range(n):
        v = (70 + 5 * math.sin(2 * math.pi * i * step_s / 86400) + rng.gauss(0, 0.5)
             + (12 if jump_at <= i < jump_at + 40 else 0)) * scale
        t = 1_700_000_000 + i * step_s
        ts = {"iso": f"{__import__('datetime').datetime.utcfromtimestamp(t).isoformat()}Z", "epoch": str(t),
              "ms": str(t * 1000)}[fmt]
        lines.append(f"{ts},{v:.6e}")
    return "\n".join(lines) + "\n"


def run(text, **kw):
    out = io.StringIO()
    summary = backtest.backtest(io.StringIO(text), out, **kw)
    rows = list(__import__("csv").reader(io.StringIO(out.getvalue())))
    return summary, rows


def flags(rows):
    return [i for i, r in enumerate(rows[1:]) if r[3] == "1"]


@pytest.mark.parametrize("fmt", ["iso", "epoch", "ms"])
def test_every_row_written_and_the_jump_found(fmt):
    summary, rows = run(series_csv(fmt=fmt))
    assert rows[0] == ["timestamp", "value", "anomaly_score", "anomaly"]
    assert len(rows) == 3001 and summary["rows"] == 3000
    f = flags(rows)
    assert f and 2000 <= f[0] <= 2004 and all(2000 <= i < 2060 for i in f)
    assert all(0.0 <= float(r[2]) <= 1.0 for r in rows[1:])


def test_truncating_the_input_never_changes_earlier_rows():
    text = series_csv()
    _, full = run(text)
    lines = text.splitlines()
    for cut in (500, 2001, 2500):
        _, part = run("\n".join(lines[:cut + 1]) + "\n")
        assert part == full[:cut + 1]


def test_any_scale_and_interval_same_answer():
    base = flags(run(series_csv())[1])
    assert flags(run(series_csv(scale=1e-4))[1]) == base
    assert flags(run(series_csv(scale=1e5))[1]) == base
    daily = flags(run(series_csv(n=600, step_s=86400, jump_at=400))[1])
    assert daily and 400 <= daily[0] <= 404


def test_columns_found_or_named_and_gaps_kept():
    text = "host,cpu,ts\n" + "".join(f"a,{50 + (i % 7) * 0.1:.2f},{1_700_000_000 + 60 * i}\n" for i in range(300))
    text = text.replace("a,50.30,", "a,,", 1)
    summary, rows = run(text)
    assert summary["timestamp_column"] == "ts" and summary["value_column"] == "cpu"
    blank = [r for r in rows[1:] if r[1] == ""]
    assert len(blank) == 1 and blank[0][2:] == ["0.000000", "0"]
    summary, _ = run(text, ts_col="ts", val_col="cpu")
    assert summary["rows"] == 300
    with pytest.raises(ValueError):
        run(text, val_col="nope")


def test_noise_only_flags_nothing():
    rng = random.Random(2)
    text = "time,value\n" + "".join(f"{i},{rng.gauss(100, 3):.3f}\n" for i in range(5000))
    assert flags(run(text)[1]) == []


def test_the_cli(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text(series_csv(n=2500))
    out = tmp_path / "out.csv"
    p = subprocess.run([sys.executable, "-m", "cli.main", "aiops", "backtest", str(src), "-o", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert len(out.read_text().splitlines()) == 2501
    bad = subprocess.run([sys.executable, "-m", "cli.main", "aiops", "backtest", str(tmp_path / "missing.csv")],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "backtest" in bad.stderr


def test_site_file_replays_the_simulator_through_the_engine_and_scores_it(tmp_path):
    import json

    from cli.fleet import model as fleet

    truth = []
    specs = fleet.demo_specs([f"S-{i}" for i in range(4)], seed=2)
    f = fleet.Fleet(specs, seed=2, start=1_767_225_600.0, rates=fleet.parse_faults("none,door_open=12"),
                    on_fault=truth.append)
    with (tmp_path / "samples.csv").open("w") as out:
        out.write("time,site_id,metric,tenant_id,value\n")
        for _ in range(4 * 60 * 6):
            for sid, m, ten, t, v in f.step(15.0):
                out.write(f"{t:.3f},{sid},{m},{ten},{v}\n")
    f.close()
    (tmp_path / "faults.jsonl").write_text("".join(json.dumps(x.record()) + "\n" for x in truth))
    doors = sum(1 for x in truth if x.type == "door_open")
    assert doors > 3
    result = backtest.replay_site_file(str(tmp_path / "samples.csv"), str(tmp_path / "faults.jsonl"))
    assert result["sites"] == 4
    door = result["types"]["door_open"]
    assert door["events"] == doors and door["recall"] == 1.0 and door["precision"] == 1.0
    assert result["false_anomalies"] == 0
