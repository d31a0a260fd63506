"""The examples run end to end on the micro zoo (CI runs them through this test)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_first_fusion_tutorial_runs(micro_zoo):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "first_fusion.py"), "--size", "micro"],
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "Total MoL layers: 2" in out
    assert out.count("expert weights [") == 4  # two inputs x two layers
    assert out.count("generated:") == 2
