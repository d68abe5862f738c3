"""A sync killed (SIGKILL) or interrupted (SIGINT) anywhere resumes to head, on every backend.

MariaDB commits DDL as it runs, so a sync killed inside a revision leaves part
of it applied; the guarded operations make the next sync finish it. SIGINT
stops at the next revision boundary with exit 130 and says so. Each trial
pauses the sync after its Nth write statement (``paused_sync.py``), so every
boundary and every point inside a revision is covered, not a random instant.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import MetaData
from sqlalchemy.engine import Engine

from cellgate.cli.exit_codes import ExitCode
from cellgate.migrations.runner import MigrationLine, check, current, head, revisions, upgrade
from cellgate.sql.engines import make_engine
from tests.functional.conftest import Deployment

SCRIPT = Path(__file__).with_name("paused_sync.py")


def _start(d: Deployment, line: str, nth: int, ready: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(d.config_file), line, str(nth), str(ready)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen[str]) -> str:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the sync never reached its pause"
        time.sleep(0.02)
    return path.read_text()


def _engine(d: Deployment, line: str) -> Engine:
    url = d.api_url if line == "api" else d.local_url
    return make_engine(url, connect_timeout=5, query_timeout=30, create_missing=True)


def _empty(engine: Engine) -> None:
    with engine.begin() as conn:
        meta = MetaData()
        meta.reflect(conn)
        meta.drop_all(conn)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("line", ["api", "cell"])
def test_a_killed_or_interrupted_sync_resumes_to_head(
    deployment: Deployment, tmp_path: Path, line: str
) -> None:
    migration_line = MigrationLine.API if line == "api" else MigrationLine.CELL
    engine = _engine(deployment, line)
    try:
        counted = tmp_path / "count"
        proc = _start(deployment, line, 0, counted)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        writes = int(counted.read_text())
        assert writes >= 2 * len(revisions(migration_line))
        trials = [(signal.SIGKILL, n) for n in range(1, writes + 1)]
        trials += [(signal.SIGINT, n) for n in range(1, writes + 1, 3)]
        for sig, nth in trials:
            _empty(engine)
            ready = tmp_path / f"ready-{sig.name}-{nth}"
            proc = _start(deployment, line, nth, ready)
            where = _wait_for(ready, proc)
            proc.send_signal(sig)
            if sig == signal.SIGINT:
                time.sleep(0.2)  # the handler runs while the sync is paused
                ready.with_suffix(".go").touch()
            _, err = proc.communicate(timeout=120)
            code = proc.returncode
            deployment.assert_no_secret(err)
            assert "Traceback" not in err, err
            if sig == signal.SIGKILL:
                assert code == -signal.SIGKILL
            else:
                reached = current(engine, migration_line)
                if reached == head(migration_line):
                    assert code == 0, (where, err)  # paused in the last revision: it finished
                else:
                    assert code == ExitCode.INTERRUPTED, (where, err)
                    assert f"stopped on request after revision {reached}" in err, err
                    assert "SIGINT received" in err
            # The next sync completes whatever the signal left, and the schema is exact.
            assert upgrade(engine, migration_line) == head(migration_line), (sig, where)
            check(engine, migration_line)
    finally:
        engine.dispose()
