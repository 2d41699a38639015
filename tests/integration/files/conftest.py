"""Files integration tests reuse the KPI tests' ASGI runner (tests/integration/kpi/kpi_support.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kpi"))
