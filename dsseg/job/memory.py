"""Batch size from free memory (``--batch-size auto``): run the pipeline on a probe batch of one
and of two images, take the peak memory of each, and fit as many images as a share of the free
memory holds.

Peak memory: on CUDA the allocator's peak (``torch.cuda.max_memory_allocated``) above what was
allocated before; on CPU the process's resident set, sampled every few milliseconds while the
probe runs (Linux ``/proc/self/statm``), above the resident set before.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import torch

AUTO_FRACTION = 0.8  # of the free memory: room for the allocator's fragmentation and other processes
AUTO_LIMIT = 64  # largest batch chosen: beyond it throughput no longer grows on one GPU
SAMPLE_SECONDS = 0.005


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is running out of memory (torch's OOM error, or a message saying so)."""
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def free_memory_bytes(device: torch.device) -> int:
    """Free device memory (CUDA) or available host memory (CPU: ``MemAvailable``), in bytes."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def resident_bytes() -> int:
    """This process's resident memory now, in bytes (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_bytes(run: Callable[[], object], device: torch.device) -> int:
    """Peak memory ``run()`` takes above what was in use when it started, in bytes."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    base = resident_bytes()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], resident_bytes())
            time.sleep(SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        run()
    finally:
        done.set()
        sampler.join()
    return max(0, max(peak[0], resident_bytes()) - base)


def fit_batch_size(
    peak_one: int, peak_two: int, free: int, fraction: float = AUTO_FRACTION, limit: int = AUTO_LIMIT
) -> int:
    """Images that fit ``fraction`` of ``free`` bytes, given the peaks of batches of one and two:
    each image costs ``peak_two − peak_one`` (at least a tenth of ``peak_one``, against noise) on
    top of a fixed part. At least 1, at most ``limit``."""
    per_image = max(peak_two - peak_one, peak_one // 10, 1)
    fixed = max(peak_one - per_image, 0)
    return int(min(limit, max(1, (fraction * free - fixed) // per_image)))


def probe_batch_size(
    run_batch: Callable[[int], object], device: torch.device, share: float = 1.0, limit: int = AUTO_LIMIT
) -> dict:
    """Run ``run_batch(1)`` and ``run_batch(2)`` (after a warm-up of one) and choose the batch size
    for ``share`` of the free memory (e.g. ½ for two workers on one device). A probe of two that
    runs out of memory gives batch size 1. Returns ``{"batch_size", "peak_one_mb", "peak_two_mb",
    "free_mb"}`` (``peak_two_mb`` None when it ran out of memory)."""
    run_batch(1)  # warm-up: lazy initialisation and caches are not per-image cost
    release_cached(device)
    peak_one = peak_bytes(lambda: run_batch(1), device)
    try:
        peak_two = peak_bytes(lambda: run_batch(2), device)
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        peak_two = None
    release_cached(device)  # the probes' cached blocks count as free
    free = int(free_memory_bytes(device) * share)
    chosen = 1 if peak_two is None else fit_batch_size(peak_one, peak_two, free, limit=limit)
    mb = 2**20
    return {
        "batch_size": chosen,
        "peak_one_mb": round(peak_one / mb, 1),
        "peak_two_mb": None if peak_two is None else round(peak_two / mb, 1),
        "free_mb": round(free / mb, 1),
    }


def release_cached(device: torch.device) -> None:
    """Return the CUDA allocator's cached blocks to the device (nothing on CPU)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
