"""``python -m benchmarks run ...``: see docs/benchmarks.md."""

from __future__ import annotations

import argparse
import sys


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure what cellgate's routing costs; see docs/benchmarks.md.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the suite and print the table")
    run.add_argument(
        "--backend",
        choices=("sqlite", "mariadb", "postgresql"),
        default="sqlite",
        help="where the API and cell databases live (servers on 127.0.0.1; default sqlite)",
    )
    run.add_argument(
        "--transport",
        choices=("memory", "rabbit"),
        default="memory",
        help="the cells' message queue: in-process, or RabbitMQ on 127.0.0.1 (default memory)",
    )
    run.add_argument(
        "--quick", action="store_true", help="fewer samples: under 45 s on SQLite + memory"
    )
    run.add_argument(
        "--clusters",
        action="store_true",
        help="also start the tests' PostgreSQL primary + standby (ports 25432-25433) and "
        "measure pg_failover_recovery_s (otherwise null)",
    )
    run.add_argument(
        "--galera",
        action="store_true",
        help="also start a 3-node Galera cluster (as root; tests/ha/galera.py) for the "
        "galera_* and retry figures (otherwise null)",
    )
    run.add_argument(
        "--rabbit-cluster",
        action="store_true",
        help="also start a 3-node RabbitMQ cluster on loopback (tests/ha/rabbit.py) and "
        "kill a node during casts (rabbit_node_loss_casts_lost; about 2 minutes)",
    )
    run.add_argument(
        "--nova",
        action="store_true",
        help="also build a Nova 34.0.0 deployment with nova-manage (Nova's cached venv, "
        "as tests/nova builds it) and measure show_over_nova (otherwise null)",
    )
    run.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    run.add_argument("--plot", metavar="DIR", help="also write PNG plots (needs matplotlib)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["moves"]:  # instance moves between cells: benchmarks/moves.py
        from benchmarks import moves

        return moves.main(argv[1:])
    args = parser().parse_args(argv)
    from benchmarks import run

    return run.main(args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
