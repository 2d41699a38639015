"""BI integration tests reuse the KPI tests' helpers (telemetry publishing, polling, the in-process
calculator, the ASGI runner) so the figures behind every statement are computed for real."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kpi"))
