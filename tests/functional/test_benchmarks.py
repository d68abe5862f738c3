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
    "load_requests_per_second",
    "load_count_5xx",
    "load_p50_ms",
    "load_p99_ms",
    "load_p99_over_p50",
    "nova_verify_rows_per_s",
    "nova_verify_peak_mb",
    "nova_verify_peak_growth",
)
META = ("backend", "transport", "cells", "versions", "cpu_count", "date", "command")
VERSIONS = ("python", "sqlalchemy", "kombu", "cellgate")


# A whole benchmark run: 25+ s of CPU. Its own marker, so the quick subset can
# leave it out, and its own group, so it runs on one worker like any other test.
pytestmark = [pytest.mark.bench, pytest.mark.xdist_group("bench")]


@pytest.mark.timeout(400)
def test_quick_run_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        # a hang bound, not a timing assert: ~65 s alone (the load step ~25 s), 120+ s busy
        timeout=360,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    doc = json.loads(out.read_text(encoding="utf-8"))

    figures = doc["figures"]
    missing = [name for name in FIGURES if name not in figures]
    assert not missing, f"figures missing from the JSON: {missing}"
    # nova verify ran on its synthetic deployment (measured on SQLite too, so never null).
    for name in ("nova_verify_rows_per_s", "nova_verify_peak_mb", "nova_verify_peak_growth"):
        assert isinstance(figures[name], int | float), (name, doc["notes"].get(name))
    assert "instance mappings over 10 cells" in doc["notes"]["nova_verify_rows_per_s"]
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

    # The load on the all-in-one service ran (SQLite cells in this run).
    assert figures["load_count_5xx"] is not None, doc["notes"].get("load_count_5xx")
    assert set(doc["goals"]) >= {"load_count_5xx", "load_p99_over_p50"}

    meta = doc["meta"]
    assert [k for k in META if k not in meta] == []
    assert meta["backend"] == "sqlite" and meta["transport"] == "memory"
    assert [k for k in VERSIONS if not meta["versions"].get(k)] == []
    assert "--quick" in meta["command"]
    assert "lookup_speedup" in result.stdout  # the table is printed
    rates = doc["series"]["locator_hit_rate"]
    assert len(rates["zipf"]) == len(rates["cyclic"]) == len(rates["multiples"])
