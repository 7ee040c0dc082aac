"""Node loss: a worker node hosting a model actor is killed mid-job; every row still lands once.

A three-node local cluster needs its own process and about a minute on two cores, so this is a
slow check: `python -m pytest -q -m slow tests/test_nodes.py` (or run `tests/node_loss.py`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_a_killed_worker_node_loses_no_rows_and_duplicates_none(tmp_path):
    script = Path(__file__).with_name("node_loss.py")
    run = subprocess.run(
        [sys.executable, str(script), "--images", "24", "--keep", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["killed_node"] in result["nodes_that_hosted_actors"]  # the node lost held a model actor
    assert 0 < result["rows_before_kill"] < result["pairs_expected"]  # killed mid-job, not before or after
    assert result["summary"]["complete"] and result["summary"]["error"] == 0
    assert result["pairs_once"] == result["pairs_expected"] == 48
    assert result["pairs_twice_or_more"] == 0 and result["pairs_missing"] == 0
