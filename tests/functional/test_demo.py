"""The README's first command: ``cellgate demo`` runs the whole scenario and exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(180)
def test_demo_passes_every_check(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cellgate", "demo", "--data-dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=150,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo passed: every check held" in result.stdout
    assert "FAIL" not in result.stdout and "Traceback" not in result.stderr
    for step in ("GET /v1/cells", "discover hosts", "goes down", "recovers without a restart"):
        assert step in result.stdout
