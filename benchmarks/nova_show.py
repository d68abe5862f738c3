"""``show_over_nova``: cellgate's routed "show instance" against Nova's own, in one run.

Nova's show path, measured with Nova's own code: ``nova.compute.api.API.get``
(what ``GET /servers/{id}`` calls after policy checks) — the instance mapping
read from the API database, ``scatter_gather_single_cell`` into the cell
(a thread-pool hop with a timeout), ``Instance.get_by_uuid`` through
oslo.db's enginefacade and oslo.versionedobjects. It runs in Nova's own
virtual environment (the one ``tests/nova`` builds: ``pip install
nova==34.0.0``, cached in ``~/.cache/cellgate``), on a deployment built by
``nova-manage`` on the run's backend (``tests.nova.deployment.build``), in a
child process that answers "run N shows" over a pipe. cellgate's side is the
routed show of ``benchmarks.routing.show_functions`` in this process. The two
are sampled alternately (ABBA, ``interleaved_once``), so machine load hits
both alike; each sample is the per-call time of a batch sized to about 20 ms.

Only with ``--nova`` (building the deployment runs nova-manage, a minute or
more); otherwise, or without Nova's virtual environment, null with the reason.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from benchmarks.deploy import Deployment
from benchmarks.routing import Plan, show_functions
from benchmarks.stats import Pair, _per_call, calibrate, interleaved_once
from cellgate import App

#: Runs under Nova's interpreter: answers each line "N" with the per-call seconds of N shows.
_CHILD = r"""
import json, sys, time
from nova import config, context, objects
from nova.compute import api as compute_api
config.parse_args(["nova-bench", "--config-file", sys.argv[1]])
objects.register_all()
ctx = context.RequestContext(user_id=sys.argv[3], project_id=sys.argv[4])
api = compute_api.API()
uuids = sys.argv[2].split(",")
for u in uuids:
    assert api.get(ctx, u).uuid == u
print(json.dumps({"ready": True}), flush=True)
i = 0
for line in sys.stdin:
    n = int(line)
    start = time.perf_counter()
    for _ in range(n):
        api.get(ctx, uuids[i % len(uuids)])
        i += 1
    print(json.dumps({"per_call_s": (time.perf_counter() - start) / n}), flush=True)
"""
CHILD_TIMEOUT = 120.0


@dataclass
class NovaShows:
    """The child process: ``per_call(n)`` runs n shows in Nova and returns seconds per call."""

    proc: subprocess.Popen[str]

    def per_call(self, n: int) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("Nova's show process ended")
        return float(json.loads(line)["per_call_s"])


def unavailable() -> str | None:
    from tests.nova.novaenv import venv_dir

    if not (venv_dir() / ".complete").exists():
        return f"Nova's virtual environment is not built ({venv_dir()}; the tests/nova tests build it)"
    return None


@contextmanager
def nova_shows(backend: str) -> Iterator[NovaShows]:
    """A Nova deployment on ``backend`` built by nova-manage, and a child process showing its instances."""
    from tests.nova import deployment
    from tests.nova.novaenv import nova_manage, venv_dir
    from tests.support import Server

    with tempfile.TemporaryDirectory(prefix="cgb-nova-") as tmp:
        server = Server(backend, Path(tmp))
        server.check()
        try:
            nova = deployment.build(
                nova_manage(), server, "rabbit://guest:guest@127.0.0.1:5672/cgb-nova", Path(tmp)
            )
            live = [u for u, _host, deleted in deployment.INSTANCES["cell1"] if not deleted]
            proc = subprocess.Popen(
                [
                    str(venv_dir() / "bin" / "python"),
                    "-W",
                    "ignore",
                    "-c",
                    _CHILD,
                    str(nova.workdir / "nova-cell1.conf"),
                    ",".join(live),
                    deployment.USER,
                    deployment.PROJECT,
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            try:
                assert proc.stdout is not None
                if not proc.stdout.readline():
                    raise RuntimeError("Nova's show process did not start")
                yield NovaShows(proc)
            finally:
                proc.kill()
                proc.wait(timeout=CHILD_TIMEOUT)
        finally:
            server.drop_all()


def show_over_nova(app: App, d: Deployment, plan: Plan) -> Pair:
    """Per-call seconds of cellgate's routed show (a) and Nova's (b), sampled ABBA."""
    routed, _direct = show_functions(app, d)
    batch = calibrate(routed, target_s=0.02, warmup_s=0.1)
    with nova_shows(d.backend) as nova:
        nova_batch = max(1, round(0.02 / nova.per_call(5)))
        return interleaved_once(
            lambda: _per_call(routed, batch),
            lambda: nova.per_call(nova_batch),
            samples=max(4, plan.api_rounds * 2),
        )
