"""Figures, their goals, the printed table and the JSON document.

The JSON has a flat ``figures`` object (name -> number, or ``null`` with the
reason in ``notes``), and beside it ``p95`` (the tail of each figure), ``goals``
(goal text and whether it was met), ``units``, ``notes``, ``series`` (the data
behind the plots) and ``meta`` (what ran, where and when).

``p95`` is the value 95% of samples were at least as good as: the 95th
percentile for times and lower-is-better ratios, the 5th percentile for
rates and higher-is-better ratios.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.stats import Series

#: Every figure the suite reports, in table order: name -> (unit, lower is better).
FIGURES: dict[str, tuple[str, bool]] = {
    "lookup_cached_us": ("us", True),
    "lookup_db_us": ("us", True),
    "lookup_speedup": ("x", False),
    "show_routed_us": ("us", True),
    "show_direct_us": ("us", True),
    "show_routed_over_direct": ("x", True),
    "show_routed_over_direct_1000_cells": ("x", True),
    "show_routed_1000_cells_us": ("us", True),
    "show_service_over_direct": ("x", True),
    "target_cell_us": ("us", True),
    "locator_hit_rate_zipf_1x": ("fraction", False),
    "locator_hit_rate_zipf_2x": ("fraction", False),
    "locator_hit_rate_zipf_4x": ("fraction", False),
    "routing_overhead_over_proxy_hop": ("x", True),
    "show_over_nova": ("x", True),
    "gc_full_pause_ms": ("ms", True),
    "gc_full_pause_frozen_ms": ("ms", True),
    "scatter_single_ms": ("ms", True),
    "scatter_100_ms": ("ms", True),
    "scatter_100_over_single": ("x", True),
    "scatter_100_engines_created": ("engines", True),
    "list_page100_rows_read_10_cells": ("rows", True),
    "list_page100_rows_read_over_nova_10_cells": ("x", True),
    "list_page100_10_cells_over_single": ("x", True),
    "list_page100_rows_read_100_cells": ("rows", True),
    "list_page100_rows_read_over_nova_100_cells": ("x", True),
    "list_page100_100_cells_over_single": ("x", True),
    "scatter_hung_overrun_ms": ("ms", True),
    "scatter_hung_ok": ("cells", False),
    "scatter_100_connections_opened": ("connections", True),
    "scatter_hung_repeated_ok": ("cells", False),
    "scatter_hung_repeated_threads": ("threads", True),
    "scatter_100_over_single_grace0": ("x", True),
    "open_connections_1000_cells": ("connections", True),
    "db_fds_1000_cells": ("fds", True),
    "rss_mb_1000_cells": ("MB", True),
    "rss_mb_growth_1000_cells": ("MB", True),
    "rpc_call_us": ("us", True),
    "rpc_cast_per_s": ("1/s", False),
    "rpc_call_over_raw_kombu": ("x", True),
    "rpc_call_over_raw_kombu_like_cellgate": ("x", True),
    "rpc_call_over_oslo_messaging": ("x", True),
    "api_show_rps": ("1/s", False),
    "api_healthz_rps": ("1/s", False),
    "api_show_over_healthz": ("x", False),
    "api_show_rps_nodelay": ("1/s", False),
    "api_healthz_rps_nodelay": ("1/s", False),
    "api_show_over_healthz_nodelay": ("x", False),
    "api_show_p50_ms_8": ("ms", True),
    "api_show_p99_ms_8": ("ms", True),
    "api_show_p50_ms_32": ("ms", True),
    "api_show_p99_ms_32": ("ms", True),
    "cli_version_ms": ("ms", True),
    "cli_startup_over_import_sqlalchemy": ("x", True),
    "pg_failover_recovery_s": ("s", True),
    "galera_two_writer_success": ("fraction", False),
    "galera_two_writer_success_without_retry": ("fraction", False),
    "retry_attempts_per_100_writes": ("retries", True),
    "rabbit_node_loss_casts_lost": ("casts", True),
    "load_requests_per_second": ("1/s", False),
    "load_count_5xx": ("answers", True),
    "load_p50_ms": ("ms", True),
    "load_p99_ms": ("ms", True),
    "load_p99_over_p50": ("x", True),
    "nova_verify_rows_per_s": ("1/s", False),
    "nova_verify_peak_mb": ("MB", True),
    "nova_verify_peak_growth": ("x", True),
}


@dataclass
class Goal:
    text: str
    check: Callable[[float], bool]


@dataclass
class Report:
    meta: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(FIGURES))
    tails: dict[str, float | None] = field(default_factory=dict)
    goals: dict[str, Goal] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)

    def put(
        self,
        name: str,
        value: float | Series | None,
        *,
        scale: float = 1.0,
        tail: float | None = None,
        note: str | None = None,
    ) -> None:
        """Record a figure: a number, or a :class:`Series` (median and tail taken here)."""
        if name not in FIGURES:
            raise KeyError(f"unknown figure {name!r}; add it to FIGURES")
        if isinstance(value, Series):
            lower_better = FIGURES[name][1]
            tail = (value.p95 if lower_better else value.p05) * scale
            value = value.median * scale
        elif value is not None:
            value *= scale
        self.figures[name] = value
        self.tails[name] = tail
        if note:
            self.notes[name] = note

    def goal(self, name: str, text: str, check: Callable[[float], bool]) -> None:
        self.goals[name] = Goal(text, check)

    def met(self, name: str) -> bool | None:
        goal, value = self.goals.get(name), self.figures.get(name)
        if goal is None or value is None:
            return None
        return bool(goal.check(value))

    # -- output -------------------------------------------------------------
    def table(self) -> str:
        rows = [("figure", "value", "p95", "unit", "goal", "met")]
        for name, (unit, _) in FIGURES.items():
            goal = self.goals.get(name)
            met = self.met(name)
            rows.append(
                (
                    name,
                    _fmt(self.figures.get(name)),
                    _fmt(self.tails.get(name)),
                    unit,
                    goal.text if goal else "-",
                    "-" if met is None else ("met" if met else "NOT MET"),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = []
        for i, row in enumerate(rows):
            lines.append(
                "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
            )
            if i == 0:
                lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        return "\n".join(lines)

    def notes_text(self) -> str:
        return "\n".join(f"- {name}: {text}" for name, text in self.notes.items())

    def document(self) -> dict[str, Any]:
        return {
            "figures": {k: _clean(v) for k, v in self.figures.items()},
            "p95": {k: _clean(v) for k, v in self.tails.items()},
            "units": {k: u for k, (u, _) in FIGURES.items()},
            "goals": {
                k: {"goal": g.text, "met": self.met(k)} for k, g in sorted(self.goals.items())
            },
            "notes": dict(self.notes),
            "series": self.series,
            "meta": self.meta,
        }

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.document(), indent=2) + "\n", encoding="utf-8")


def _clean(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.6g}")


def _fmt(value: float | None) -> str:
    if value is None:
        return "null"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def emit_json(result: dict[str, Any], path: str | None) -> None:
    """Print a sub-command's result as JSON, and write it to ``path`` too if given."""
    text = json.dumps(result, indent=2, sort_keys=True)
    print(text)
    if path:
        Path(path).write_text(text + "\n", encoding="utf-8")
