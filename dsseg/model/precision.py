"""What ``dtype="auto"`` resolves to: float16 on CUDA; on a CPU, bfloat16 where the CPU multiplies
bfloat16 natively (AMX-BF16 or AVX512-BF16) and every method of the run is known to agree in it
with float32, else float32. Torch-free, so a job can resolve its precision on the driver.

Which methods agree is measured, not assumed (``dsseg benchmark --precision-study``,
``dsseg.benchmark.precision``; figures in docs/speed.md, "Half precision on CPUs"). On the random-weight
backbones this project can run, bfloat16 moves the labels of every attention method far from
float32's (adjusted Rand index 0.17–0.33 on ``tiny``), and so does rounding only the encoded latent
to bfloat16 in an otherwise float32 run (0.69): those backbones amplify any perturbation, so they
cannot show that bfloat16 is safe for a method, and ``HALF_PRECISION_METHODS`` stays empty until a
study with real weights shows agreement. ``--dtype bfloat16`` opts in (1.7× faster end to end on
``sd-v1-random``).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Collection
from pathlib import Path

# CPU flags (as Linux's /proc/cpuinfo names them) of native bfloat16 matrix arithmetic.
NATIVE_BFLOAT16_FLAGS = ("amx_bf16", "avx512_bf16")
# Methods whose labels agree under bfloat16 with float32's in the precision study; "auto" on a CPU picks
# bfloat16 only when every method of the run is here (see the module docstring for why it is empty).
HALF_PRECISION_METHODS: frozenset[str] = frozenset()
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU's feature flags: /proc/cpuinfo's ``flags`` line where there is one (Linux), else the
    bfloat16 support torch's CPU probes report, named like the Linux flags (torch is not imported on
    Linux, so that a job's driver stays light)."""
    flags: set[str] = set()
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    try:
        import torch

        if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
            flags.add("avx512_bf16")
        if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
            flags.add("amx_bf16")
    except ImportError:
        pass
    return frozenset(flags)


def native_bfloat16_flag(flags: Collection[str] | None = None) -> str | None:
    """The first of ``NATIVE_BFLOAT16_FLAGS`` that ``flags`` (default: this CPU's) hold, or None."""
    flags = cpu_flags() if flags is None else flags
    return next((flag for flag in NATIVE_BFLOAT16_FLAGS if flag in flags), None)


def auto_dtype(
    device_type: str,
    methods: Collection[str] = (),
    flags: Collection[str] | None = None,
    half_precision_methods: Collection[str] | None = None,
) -> tuple[str, str]:
    """(dtype name, why) for ``dtype="auto"`` on a ``device_type`` ("cuda" or "cpu") device running
    ``methods`` (empty: any method, so every method must agree). ``flags``: the CPU's (default:
    this machine's); ``half_precision_methods``: the methods that agree in bfloat16 (default
    ``HALF_PRECISION_METHODS``)."""
    if device_type == "cuda":
        return "float16", "half precision on CUDA, as the authors' released code runs"
    flag = native_bfloat16_flag(flags)
    if flag is None:
        return "float32", "this CPU has no native bfloat16 (amx_bf16 or avx512_bf16)"
    from dsseg.methods import METHOD_NAMES

    agreeing = HALF_PRECISION_METHODS if half_precision_methods is None else half_precision_methods
    disagreeing = sorted(set(methods or METHOD_NAMES) - set(agreeing))
    if disagreeing:
        return "float32", (
            f"this CPU runs bfloat16 natively ({flag}), but {', '.join(disagreeing)} "
            f"{'keeps' if len(disagreeing) == 1 else 'keep'} float32 under auto "
            "(bfloat16 agreement not shown: docs/speed.md#half-precision-on-cpus); --dtype bfloat16 opts in"
        )
    return "bfloat16", f"this CPU runs bfloat16 natively ({flag})"


@functools.lru_cache(maxsize=16)
def announce(dtype: str, why: str, device_type: str) -> None:
    """One line on stderr saying what "auto" chose and why (once per process and choice)."""
    print(f"dsseg: dtype auto → {dtype} on {device_type}: {why}", file=sys.stderr)
