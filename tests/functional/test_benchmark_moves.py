"""``python -m benchmarks moves`` runs end to end on SQLite and writes every figure's key.

The shape of the JSON only, never a figure's value (those are in
docs/benchmarks.md); a handful of instances so it stays quick.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIGURES = (
    "moves_per_second",
    "raw_copies_per_second",
    "move_over_raw_copy",
    "show_p99_ms",
    "show_p99_moving_over_still",
)

pytestmark = [pytest.mark.bench, pytest.mark.xdist_group("bench")]


def test_the_moves_benchmark_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "moves.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "moves", "--instances", "5", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    assert set(FIGURES) <= set(figures)
    assert figures["instances"] == 5 and figures["backend"] == "sqlite"
    assert figures["show_samples"]["moving"] > 0
