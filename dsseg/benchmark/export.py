"""``dsseg export`` at scale: a synthetic segment-job output of many rows with small masks, exported in
each format by a separate process whose time and peak resident memory are measured.

    python tests/export_scale.py [--rows 1000000] [--formats coco,hf] [--work DIR] [--side 32] [--named]

runs ``run_benchmark`` and prints its report as JSON. The synthetic output is written as the job writes it (parts of 256
rows through ``write_parts``): a handful of small PNG images under ``WORK/images`` that the rows'
sources cycle over, four segments per ok row (the image's quadrants; named ``background``,
``cat``, ``dog``, ``ignore`` with scores under ``--named``) and one error row in every 100.
``--work`` keeps the output for a rerun (it is reused when it already holds ``--rows`` rows).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from dsseg.io.masks import encode_labels
from dsseg.io.results import write_config, write_parts
from dsseg.io.schema import OUTPUT_SCHEMA, TIMING_STAGES

ROWS_PER_FILE = 256
ERROR_EVERY = 100
IMAGES = 4
NAMES = ("background", "cat", "dog", "ignore")
CONFIG_ID = "synthetic"


def write_images(folder: Path, side: int, count: int = IMAGES) -> list[str]:
    """``count`` small RGB PNGs of ``side``² pixels; returns their paths."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = folder / f"image{index}.png"
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def quadrants(side: int) -> np.ndarray:
    """(side, side) int32 label map of four quadrants, ids 0..3."""
    half = side // 2
    labels = np.zeros((side, side), dtype=np.int32)
    labels[:half, half:], labels[half:, :half], labels[half:, half:] = 1, 2, 3
    return labels


def write_synthetic_output(output: Path, rows: int, side: int = 32, named: bool = False) -> dict[str, Any]:
    """A segment-job output of ``rows`` rows (ids ``img/000000123.png``) of config ``synthetic``;
    returns its description."""
    start = time.perf_counter()
    sources = write_images(output.parent / f"{output.name}-images", side)
    segments = encode_labels(quadrants(side))
    for segment, name in zip(segments, NAMES):
        segment.update(label=name if named else None, score=0.9 if named else None, parent=None)
    method = "openvocab" if named else "diffseg"
    ok = {"width": side, "height": side, "method": method, "config_id": CONFIG_ID, "status": "ok", "error": None}
    error = ok | {"status": "error", "error": "truncated: synthetic error row", "segments": []}
    templates = [
        {**(error if n == 0 else ok | {"segments": segments}), "source": sources[n % len(sources)], "image_id": ""}
        | {"timings_ms": dict.fromkeys(TIMING_STAGES, 0.0), "caption": None}
        for n in range(ERROR_EVERY)
    ]
    template = pa.Table.from_pylist(templates, schema=OUTPUT_SCHEMA)
    column = OUTPUT_SCHEMA.get_field_index("image_id")
    write_config(str(output), {"input": "synthetic", "configs": [{"config_id": CONFIG_ID, "method": method}]})
    files = 0
    for first in range(0, rows, ROWS_PER_FILE):
        numbers = np.arange(first, min(first + ROWS_PER_FILE, rows))
        part = template.take(pa.array(numbers % ERROR_EVERY))
        ids = pa.array([f"img/{n:09d}.png" for n in numbers.tolist()], pa.string())
        files += len(write_parts(part.set_column(column, "image_id", ids), str(output)))
    (output / "_SUCCESS").write_text("{}")
    return {
        "rows": rows,
        "files": files,
        "side": side,
        "named": named,
        "write_s": round(time.perf_counter() - start, 1),
    }


# Runs ``dsseg ARGS`` and writes the process's own peak RSS (KiB, Linux ru_maxrss) to the file argv[1].
PEAK_RUNNER = """
import resource, sys
from dsseg.cli import main
status = main(sys.argv[2:])
open(sys.argv[1], "w").write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
sys.exit(status)
"""


def measure(arguments: list[str], timeout: float) -> dict[str, Any]:
    """Run ``dsseg ARGUMENTS`` in a new process; its wall time, exit status, peak RSS (MiB) and the JSON it printed."""
    with tempfile.NamedTemporaryFile(suffix=".peak") as peak:
        command = [sys.executable, "-c", PEAK_RUNNER, peak.name, *arguments]
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        seconds = time.perf_counter() - start
        written = Path(peak.name).read_text().strip()
    result: dict[str, Any] = {"status": process.returncode, "seconds": round(seconds, 1)}
    result["peak_rss_mib"] = round(int(written) / 1024, 1) if written else None
    try:
        result["summary"] = json.loads(stdout)
    except json.JSONDecodeError:
        result["stderr"] = stderr[-2000:]
    return result


def run_benchmark(
    rows: int,
    formats: Sequence[str],
    work: Path,
    side: int = 32,
    named: bool = False,
    limit: int | None = None,
    timeout: float = 3600,
) -> dict[str, Any]:
    """Write (or reuse) the synthetic output of ``rows`` rows under ``work`` and export it in each of
    ``formats`` (its own process each, into ``work/export-<format>``); the report."""
    output = work / f"output-{rows}-{side}{'-named' if named else ''}"
    report: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    if not (output / "_SUCCESS").is_file():
        shutil.rmtree(output, ignore_errors=True)
        report["output"] = write_synthetic_output(output, rows, side, named)
    else:
        report["output"] = {"rows": rows, "reused": str(output)}
    print(f"output ready: {report['output']}", file=sys.stderr, flush=True)
    report["exports"] = {}
    for name in formats:
        to = work / f"export-{name}"
        arguments = ["export", str(output), "--format", name, "--to", str(to), "--overwrite"]
        result = measure(arguments + (["--limit", str(limit)] if limit else []), timeout)
        exported = (result.get("summary") or {}).get("rows_exported")
        if exported:
            result["rows_per_s"] = round(exported / result["seconds"], 1)
        result["export_mib"] = round(sum(f.stat().st_size for f in to.rglob("*") if f.is_file()) / 2**20, 1)
        report["exports"][name] = result
        print(f"{name}: {result['seconds']} s", file=sys.stderr, flush=True)
    return report
