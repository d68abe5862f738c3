"""How long a full garbage collection pauses a service process, with and without a frozen heap.

Measured in a fresh interpreter that does what ``cellgate serve api`` does
before it serves: builds the App from the run's config, loads the cell
mappings and creates the FastAPI application. It then times full
collections (``gc.collect()``, the median of several) before and after
:func:`cellgate.service.heap.freeze_startup_heap`. A subprocess, so the
benchmark process's own objects (every figure's data) are not counted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_CHILD = r"""
import gc, json, statistics, sys, time
from cellgate import App, RequestContext, load_settings
from cellgate.service.http import create_api
from cellgate.service.heap import freeze_startup_heap

settings = load_settings(sys.argv[1])
app = App(settings)
app.cells.list(RequestContext())
api = create_api(app, settings.service)

def pauses(n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        gc.collect()
        out.append(time.perf_counter() - t)
    return statistics.median(out)

gc.collect()
before = pauses(int(sys.argv[2]))
frozen = freeze_startup_heap()
after = pauses(int(sys.argv[2]))
print(json.dumps({"before_s": before, "after_s": after, "frozen": frozen}))
app.close()
"""


@dataclass(frozen=True)
class Pauses:
    before_s: float
    after_s: float
    frozen: int


def full_collection_pauses(config: Path, samples: int) -> Pauses:
    env = {**os.environ, "CELLGATE_CONFIG": str(config)}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(config), str(samples)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=env,
    ).stdout
    data = json.loads(out.strip().splitlines()[-1])
    return Pauses(data["before_s"], data["after_s"], data["frozen"])
