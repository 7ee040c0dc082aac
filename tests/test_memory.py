"""Batch size from free memory: the fit, the CPU peak meter, and a worker under --batch-size auto."""

from __future__ import annotations

import json
import mmap
import time

import numpy as np
import pytest
import torch
from helpers import IMAGES

from dsseg.job.config import SegmentJob
from dsseg.job.memory import fit_batch_size, peak_bytes, probe_batch_size
from dsseg.job.model_stage import SegmentWorker
from dsseg.spec import MethodSpec

MB = 2**20


def test_fit_batch_size_counts_the_fixed_and_the_per_image_parts():
    # 1 image: 300 MB, 2 images: 400 MB → 100 MB per image on 200 MB fixed; 0.8 × 1000 MB free → 6.
    assert fit_batch_size(300 * MB, 400 * MB, 1000 * MB) == 6
    assert fit_batch_size(300 * MB, 400 * MB, 100 * MB) == 1  # nothing fits: one image, OOM halving guards the rest
    assert fit_batch_size(300 * MB, 400 * MB, 10**6 * MB) == 64  # capped
    assert (
        fit_batch_size(100 * MB, 100 * MB, 300 * MB) == 15
    )  # no growth measured: a tenth of the peak per image, (240 − 90) / 10


def test_cpu_peak_meter_sees_a_transient_allocation():
    def allocate() -> None:
        block = np.ones(200 * MB // 8)  # 200 MB, freed on return
        block += 1

    assert 150 * MB < peak_bytes(allocate, torch.device("cpu")) < 400 * MB


def test_probe_measures_the_per_image_cost():
    def run(n: int) -> None:
        # Mapped memory, returned to the system when unmapped (a freed malloc block may stay in the
        # heap and hide the next run's peak); held long enough for the sampler on a busy machine.
        with mmap.mmap(-1, n * 64 * MB) as block:
            pages = np.frombuffer(block, dtype=np.uint8)
            pages[:: mmap.PAGESIZE] = 1  # touch every page
            del pages
            time.sleep(0.2)

    probe = probe_batch_size(run, torch.device("cpu"))
    assert 40 < probe["peak_two_mb"] - probe["peak_one_mb"] < 100
    expected = fit_batch_size(
        int(probe["peak_one_mb"] * MB), int(probe["peak_two_mb"] * MB), int(probe["free_mb"] * MB)
    )
    assert abs(probe["batch_size"] - expected) <= 1  # the reported numbers (rounded to 0.1 MB) give the chosen batch


def test_a_probe_of_two_that_runs_out_of_memory_gives_batch_one():
    def run(n: int) -> None:
        if n > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")

    probe = probe_batch_size(run, torch.device("cpu"))
    assert probe["batch_size"] == 1 and probe["peak_two_mb"] is None
    with pytest.raises(ZeroDivisionError):  # other errors are not swallowed
        probe_batch_size(lambda n: 1 / (n - 2), torch.device("cpu"))


def test_auto_batch_size_is_validated_and_probed_by_the_worker(tmp_path, capsys):
    with pytest.raises(ValueError, match="auto"):
        SegmentJob(input=str(IMAGES), output=str(tmp_path), batch_size="many")
    job = SegmentJob(
        input=str(IMAGES),
        output=str(tmp_path),
        backbone="tiny",
        configs=[MethodSpec("diffseg", {"image_size": 128})],
        device="cpu",
        batch_size="auto",
    )
    assert job.rows_per_model_call == 64
    worker = SegmentWorker(job)
    logged = capsys.readouterr().err
    assert "batch_size auto → " in logged
    assert (
        worker.batch_limit == json.loads(logged.split("→ ", 1)[1].splitlines()[0])["batch_size"]
    )  # the actor uses what it probed
