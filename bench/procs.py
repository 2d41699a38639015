"""Process accounting shared by the benchmarks."""

from __future__ import annotations

from pathlib import Path


def cpu_seconds(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each group of processes (and their children)."""
    import psutil

    out = {}
    for name, group in pids.items():
        total = 0.0
        for pid in group:
            try:
                proc = psutil.Process(pid)
                for p in [proc, *proc.children(recursive=True)]:
                    t = p.cpu_times()
                    total += t.user + t.system
            except psutil.Error:
                pass
        out[name] = total
    return out


def pg_postmaster(data_dir: Path) -> int:
    """The pid of the PostgreSQL server whose data folder this is."""
    return int((Path(data_dir) / "postmaster.pid").read_text().split()[0])
