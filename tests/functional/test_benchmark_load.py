"""``python -m benchmarks load --quick`` runs end to end and writes every figure's key.

The shape of the JSON only, never a figure's value (those are in
docs/benchmarks.md). ``--cells auto`` takes the real MariaDB, PostgreSQL and
RabbitMQ when they answer, as they do under CI; the run makes its own
databases and vhosts and drops them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIGURES = (
    "requests",
    "concurrency",
    "cells",
    "backends",
    "requests_per_second",
    "count_5xx",
    "p50_ms",
    "p99_ms",
    "p99_over_p50",
    "statuses",
    "per_kind",
    "failures",
    "goals",
)

pytestmark = [pytest.mark.bench, pytest.mark.xdist_group("bench")]


def test_the_load_benchmark_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "load",
            "--quick",
            "--requests",
            "60",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    assert set(FIGURES) <= set(figures)
    assert figures["requests"] == 60 and figures["concurrency"] == 20
    assert sum(figures["statuses"].values()) == 60
    assert set(figures["goals"]) == {"count_5xx", "p99_over_p50"}
    assert all(set(goal) == {"goal", "met"} for goal in figures["goals"].values())
    assert {"show", "list", "create"} <= set(figures["per_kind"])
    assert {"cell1", "cell2"} <= set(figures["cells"])
    if os.environ.get("CI") == "true":  # the servers run under CI: the real cells are in
        assert {"cell-mariadb", "cell-pg"} <= set(figures["cells"])
