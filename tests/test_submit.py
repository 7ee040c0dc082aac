"""The submit path of docs/cluster.md, as a new user runs it: a local head, `ray job submit`, the job's rows.

Needs the `cluster` extra (ray[default]: the dashboard's job server) and a free machine (no
other local head), so it is a slow check: `python -m pytest -q -m slow tests/test_submit.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import IMAGES, ROOT

from dsseg.io.results import read_results

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_ray_job_submit_on_a_local_head_writes_every_row(tmp_path):
    pytest.importorskip("aiohttp", reason="ray job submit needs the cluster extra: pip install -e '.[cluster]'")
    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    env = {**os.environ, "RAY_AUTH_MODE": "token"}  # docs/cluster.md's path: token auth, as `ray start` enables it
    env.pop("RAY_ADDRESS", None)
    port, dashboard = _free_port(), _free_port()
    head = [ray_cli, "start", "--head", f"--port={port}", f"--dashboard-port={dashboard}", "--num-cpus=3"]
    subprocess.run(head, env=env, check=True, capture_output=True, timeout=180)
    try:
        output = tmp_path / "submitted"
        submit = [
            ray_cli, "job", "submit", f"--address=http://127.0.0.1:{dashboard}", "--working-dir", str(ROOT), "--",
            "python", "jobs/segment.py", "--input", "tests/data/images", "--output", str(output),
            "--backbone", "tiny", "--device", "cpu", "--param", "image_size=128",
        ]  # fmt: skip
        run = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert "dsseg: running on the Ray cluster at" in run.stdout
        assert "has constructor arguments" not in run.stdout + run.stderr
        rows = read_results(str(output)).to_pylist()
        images = sorted(p.relative_to(IMAGES).as_posix() for p in IMAGES.rglob("*") if p.is_file())
        assert sorted(r["image_id"] for r in rows) == images
        assert json.loads((output / "_SUCCESS").read_text())["complete"]
        # A relative output would land in the job's temporary copy of the working dir: refused.
        relative = [*submit[: submit.index("--output") + 1], "out/x", *submit[submit.index("--output") + 2 :]]
        run = subprocess.run(relative, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert run.returncode != 0 and "'out/x' is relative" in run.stdout + run.stderr
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=120)
