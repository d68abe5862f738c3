"""``xdist_group`` groups under this pytest (tests/xdist_groups.py says why it needs help).

Two checks: this very test, run by a ``--dist loadgroup`` worker, carries its
group in its node id (what the scheduler reads); and a small suite run in a
child pytest with ``-n 2 --dist loadgroup`` and the hook puts every test of
one group on one worker (a module mark, a test mark, and a fixture param's
mark as tests/nova/conftest.py uses). Without the hook the child run reports
no group at all (no ``@`` suffix reaches the scheduler), so the check fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SUITE = {
    "test_module_group.py": """
import pytest
from record import record
pytestmark = pytest.mark.xdist_group("mod")
@pytest.mark.parametrize("n", range(6))
def test_grouped(n, request):
    record(request)
""",
    "test_mixed.py": """
import pytest
from record import record
@pytest.mark.xdist_group("mod")
def test_joins_the_module_group_of_the_other_file(request):
    record(request)
@pytest.mark.parametrize("n", range(8))
def test_free(n, request):
    record(request)
""",
    "test_fixture_params.py": """
import pytest
from record import record
@pytest.fixture(scope="session", params=[
    pytest.param("a", marks=pytest.mark.xdist_group("fix-a")),
    pytest.param("b", marks=pytest.mark.xdist_group("fix-b")),
])
def backend(request):
    return request.param
@pytest.mark.parametrize("n", range(4))
def test_by_backend(backend, n, request):
    record(request)
""",
    "record.py": """
import json, os, pathlib
def record(request):
    out = pathlib.Path(os.environ["GROUPS_OUT"])
    name = request.node.nodeid.replace("/", "_").replace(":", "_")
    (out / (str(abs(hash(name))) + ".json")).write_text(json.dumps(
        {"nodeid": request.node.nodeid, "worker": os.environ["PYTEST_XDIST_WORKER"]}))
""",
}


@pytest.mark.xdist_group("grouping-self-check")
def test_this_test_carries_its_group_in_its_node_id(request: pytest.FixtureRequest) -> None:
    if not request.config.getvalue("loadgroup"):
        pytest.skip("not run by a --dist loadgroup worker")
    assert request.node.nodeid.endswith("@grouping-self-check")


def test_each_group_runs_on_one_worker(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    for name, body in SUITE.items():
        (suite / name).write_text(body, encoding="utf-8")
    (suite / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    env = {
        **os.environ,
        "GROUPS_OUT": str(out),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(suite)]),
    }
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("PYTEST_ADDOPTS", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.xdist_groups",
            "-p",
            "no:cacheprovider",
            "-n",
            "2",
            "--dist",
            "loadgroup",
            "-q",
            "-c",
            str(suite / "pytest.ini"),
            "--rootdir",
            str(suite),
            str(suite),
        ],  # fmt: skip
        cwd=suite,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    runs = [json.loads(p.read_text(encoding="utf-8")) for p in out.glob("*.json")]
    assert len(runs) == 6 + 1 + 8 + 8
    by_group: dict[str, set[str]] = {}
    for run in runs:
        group = run["nodeid"].rpartition("@")[2] if "@" in run["nodeid"] else ""
        by_group.setdefault(group, set()).add(run["worker"])
    assert set(by_group) == {"mod", "fix-a", "fix-b", ""}
    for group in ("mod", "fix-a", "fix-b"):
        assert len(by_group[group]) == 1, (group, by_group[group])
