"""PNG plots of the scaling series (matplotlib, the optional ``bench`` group)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write(series: dict[str, Any], meta: dict[str, Any], out: Path) -> list[Path]:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit(
            "benchmarks: --plot needs matplotlib: pip install -e '.[bench]'"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    where = (
        f"{meta['backend']} + {meta['transport']}, {meta['cpu_count']} CPUs, {meta['date'][:10]}"
    )
    written = []

    scatter = series.get("scatter_vs_cells")
    if scatter:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.plot(
            scatter["cells"], scatter["scatter_ms"], "o-", label="scatter_gather (App defaults)"
        )
        ax.plot(scatter["cells"], scatter["sequential_ms"], "s--", label="sequential loop")
        if scatter.get("tuned_ms"):
            ax.plot(
                scatter["cells"],
                [float("nan") if v is None else v for v in scatter["tuned_ms"]],
                "^-",
                label=f"what-if: {scatter['tuned_label']}",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(scatter["cells"], [str(c) for c in scatter["cells"]])
        ax.set_xlabel("cells in the scatter-gather")
        ax.set_ylabel("one scatter-gather call, ms (median)")
        ax.set_title(f"Each cell waits 20 ms in its database\n{where}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        path = out / "scatter_vs_cells.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    rates = series.get("locator_hit_rate")
    if rates:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.plot(rates["multiples"], rates["zipf"], "o-", label="Zipf lookups")
        ax.plot(rates["multiples"], rates["cyclic"], "s--", label="cyclic scan")
        ax.set_xlabel(f"working set / locator size ({rates['capacity']} entries)")
        ax.set_ylabel("hit rate")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"Instance locator (LRU) hit rate\n{where}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend()
        path = out / "locator_hit_rate.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    show = series.get("show_vs_cells")
    if show:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.errorbar(
            show["cells"],
            show["routed_us"],
            yerr=[
                [0] * len(show["cells"]),
                [p - m for p, m in zip(show["routed_p95_us"], show["routed_us"], strict=True)],
            ],
            fmt="o-",
            capsize=3,
            label="routed: locate, cells.get, target_cell, session, select",
        )
        ax.errorbar(
            show["cells"],
            show["direct_us"],
            yerr=[
                [0] * len(show["cells"]),
                [p - m for p, m in zip(show["direct_p95_us"], show["direct_us"], strict=True)],
            ],
            fmt="s--",
            capsize=3,
            label="direct: Session on the engine, select",
        )
        ax.set_xscale("log")
        ax.set_xticks(show["cells"], [f"{c:,}" for c in show["cells"]])
        ax.set_ylim(bottom=0)
        ax.set_xlabel("cells mapped")
        ax.set_ylabel("show instance, us (median; bar to p95)")
        ax.set_title(f"Routed show vs a single-database service\n{where}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right")
        path = out / "show_vs_cells.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
