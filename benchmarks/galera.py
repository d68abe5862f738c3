"""Galera figures: two writers on two nodes, with and without the conflict retry.

``python -m benchmarks run --galera`` starts the 3-node cluster of
``tests/ha/galera.py`` (root, Debian's mariadb-server and galera-4), runs two
writers creating cells through node 1 and node 2 at once, first with
``conflict_attempts = 1`` (no retry: the baseline, measured in the same run)
and then with the default, and stops the cluster. Without ``--galera``, or
when the cluster cannot start, the figures are ``null`` with the reason.

- ``galera_two_writer_success``: the fraction of writes that succeeded with
  the retry (the goal is 1.0);
- ``galera_two_writer_success_without_retry``: the same without it;
- ``retry_attempts_per_100_writes``: conflict retries per 100 writes, with it.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Any

from cellgate import App, admin, load_settings

WRITES = 100  # per writer


def measure() -> dict[str, Any]:
    """Start a cluster, measure, stop it; raises if the cluster cannot start."""
    from tests.ha.galera import SQL_PORTS, running_cluster

    with running_cluster() as cluster, tempfile.TemporaryDirectory() as tmp:
        base = _writers(cluster, SQL_PORTS[:2], Path(tmp) / "base", attempts=1)
        retried = _writers(cluster, SQL_PORTS[:2], Path(tmp) / "retry", attempts=None)
        return {
            "galera_two_writer_success": retried["ok"] / retried["writes"],
            "galera_two_writer_success_without_retry": base["ok"] / base["writes"],
            "retry_attempts_per_100_writes": 100 * retried["retries"] / retried["writes"],
            "startup_s": cluster.startup_seconds,
        }


def _writers(
    cluster: Any, ports: tuple[int, ...], tmp: Path, attempts: int | None
) -> dict[str, int]:
    from tests.ha.galera import GaleraCluster

    tmp.mkdir(parents=True)
    name, password = cluster.new_database()
    configs = []
    for port in ports:
        url = GaleraCluster.url(name, password, port).render(hide_password=False)
        path = tmp / f"{port}.conf"
        extra = f"conflict_attempts = {attempts}\n" if attempts else ""
        path.write_text(
            f"[DEFAULT]\nstate_path = {tmp / 'state'}\n"
            f"[api_database]\nconnection = {url}\nquery_timeout = 20\n{extra}",
            encoding="utf-8",
        )
        configs.append(path)
    with App(load_settings(configs[0])) as app:
        admin.sync_api(app)
    for port in ports:  # every node has the schema before the writers start
        cluster.wait_schema(name, port)
    counts = {"ok": 0, "writes": 0, "retries": 0}
    lock = threading.Lock()
    start = threading.Barrier(len(configs), timeout=30)

    def write(w: int, config: Path) -> None:
        ok = 0
        with App(load_settings(config)) as app:
            start.wait()
            for j in range(WRITES):
                cell = f"w{w}-c{j}"
                try:
                    admin.create_cell(
                        app,
                        name=cell,
                        transport_url=f"memory://{cell}",
                        database_connection=f"sqlite:///{tmp}/{cell}.sqlite",
                    )
                    ok += 1
                except Exception:  # counted, not raised: the figure is the fraction
                    pass
            with lock:
                counts["ok"] += ok
                counts["writes"] += WRITES
                counts["retries"] += app.retries.total_retries

    threads = [threading.Thread(target=write, args=(w, c)) for w, c in enumerate(configs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    cluster.drop_database(name)
    return counts
