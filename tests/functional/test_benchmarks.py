"""The benchmark suite runs, end to end, and writes every figure's key.

It runs ``python -m benchmarks run --quick`` on SQLite + memory once, so the
suite cannot rot. It checks the shape of the JSON only, never a figure's
value: timings belong to docs/benchmarks.md, not to asserts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FIGURES = (
    "lookup_cached_us",
    "lookup_db_us",
    "lookup_speedup",
    "show_routed_us",
    "show_direct_us",
    "show_routed_over_direct",
    "show_routed_over_direct_1000_cells",
    "target_cell_us",
    "locator_hit_rate_zipf_1x",
    "locator_hit_rate_zipf_2x",
    "locator_hit_rate_zipf_4x",
    "gc_full_pause_ms",
    "routing_overhead_over_proxy_hop",
    "show_over_nova",
    "gc_full_pause_frozen_ms",
    "scatter_single_ms",
    "scatter_100_ms",
    "scatter_100_over_single",
    "scatter_hung_overrun_ms",
    "list_page100_rows_read_10_cells",
    "list_page100_10_cells_over_single",
    "list_page100_rows_read_100_cells",
    "list_page100_100_cells_over_single",
    "scatter_100_engines_created",
    "scatter_100_connections_opened",
    "scatter_hung_repeated_ok",
    "scatter_hung_repeated_threads",
    "open_connections_1000_cells",
    "rss_mb_1000_cells",
    "rpc_call_us",
    "rpc_cast_per_s",
    "rpc_call_over_raw_kombu",
    "rpc_call_over_oslo_messaging",
    "api_show_rps",
    "api_healthz_rps",
    "api_show_over_healthz",
    "cli_version_ms",
    "cli_startup_over_import_sqlalchemy",
)
META = ("backend", "transport", "cells", "versions", "cpu_count", "date", "command")
VERSIONS = ("python", "sqlalchemy", "kombu", "cellgate")


# A whole benchmark run: 25+ s of CPU. Its own marker, so the quick subset can
# leave it out, and its own group, so it runs on one worker like any other test.
pytestmark = [pytest.mark.bench, pytest.mark.xdist_group("bench")]


@pytest.mark.timeout(330)
def test_quick_run_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,  # a hang bound, not a timing assert: ~40 s alone, 100+ s on a busy box
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    doc = json.loads(out.read_text(encoding="utf-8"))

    figures = doc["figures"]
    missing = [name for name in FIGURES if name not in figures]
    assert not missing, f"figures missing from the JSON: {missing}"
    for name, value in figures.items():
        assert value is None or isinstance(value, int | float), (name, value)
    # Not measurable on SQLite + memory: null, with the reason beside it.
    for name in (
        "rpc_call_over_raw_kombu",
        "rpc_call_over_oslo_messaging",
        "routing_overhead_over_proxy_hop",
        "show_over_nova",
    ):
        if figures[name] is None:
            assert doc["notes"].get(name), f"{name} is null without a reason"

    meta = doc["meta"]
    assert [k for k in META if k not in meta] == []
    assert meta["backend"] == "sqlite" and meta["transport"] == "memory"
    assert [k for k in VERSIONS if not meta["versions"].get(k)] == []
    assert "--quick" in meta["command"]
    assert "lookup_speedup" in result.stdout  # the table is printed
    rates = doc["series"]["locator_hit_rate"]
    assert len(rates["zipf"]) == len(rates["cyclic"]) == len(rates["multiples"])
