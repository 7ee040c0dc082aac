"""Soak: a few thousand images with bad inputs of every kind, the driver killed twice, resumed.

    python tests/soak.py [--images 2000] [--bad-share 0.05] [--seed 0] [--work DIR]

Not a CI test (it takes about ten minutes on two cores). It writes ``--images`` generated images,
``--bad-share`` of them bad or unusual inputs of every kind the job reports (truncated, zero
bytes, not an image, decompression-bomb header, damaged pixel data; and CMYK, 16-bit, 1×1,
EXIF-rotated, which must segment), then runs ``jobs/segment.py`` (tiny backbone, 64² model
input, two configs) as a separate driver process:

1. killed with SIGKILL at a random point between 15 % and 45 % of the rows,
2. rerun (it resumes) and killed again between 55 % and 80 %,
3. rerun to the end;
4. a fresh, uninterrupted run into a second output, to measure the driver's memory.

Checks: exactly one row per (image, config); every bad input an error row with its reason and
every unusual one an ok row of its displayed size; no temporary files left; ``_SUCCESS``
written. Reports the driver's peak resident memory up to 500 images and up to the end of the
fresh run. Prints one JSON document; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from faults import _orientation, broken_png, encode, gigantic_png
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dsseg.io.results import part_files, read_results  # noqa: E402

# kind → (file extension, the reason code of its error row, or None: it must segment)
KINDS = {
    "truncated": ("jpg", "truncated"),
    "zero_bytes": ("jpg", "empty_file"),
    "not_an_image": ("png", "not_an_image"),
    "bomb": ("png", "too_large"),
    "damaged": ("png", "corrupt"),
    "cmyk": ("jpg", None),
    "gray16": ("png", None),
    "one_pixel": ("png", None),
    "exif_rotated": ("jpg", None),
}
CONFIGS = (
    {"method": "diffseg", "image_size": 64, "kl_threshold": 0.9},
    {"method": "diffseg", "image_size": 64, "kl_threshold": 1.1},
)


def photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth random colour field, ``width × height``."""
    coarse = rng.integers(0, 256, size=(3, 4, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)


def input_bytes(kind: str, rng: np.random.Generator) -> tuple[bytes, tuple[int, int] | None]:
    """(file bytes, displayed (H, W) when the input must segment) of one input of ``kind``."""
    width, height = int(rng.integers(48, 200)), int(rng.integers(48, 200))
    picture = photo(rng, width, height)
    if kind == "good":
        return encode(picture, "JPEG", quality=90), (height, width)
    if kind == "truncated":
        data = encode(picture, "JPEG")
        return data[: len(data) // 2], None
    if kind == "zero_bytes":
        return b"", None
    if kind == "not_an_image":
        return b"a note, not pixels\n" * 20, None
    if kind == "bomb":
        return gigantic_png(), None
    if kind == "damaged":
        return broken_png(encode(picture, "PNG")), None
    if kind == "cmyk":
        return encode(picture.convert("CMYK"), "JPEG"), (height, width)
    if kind == "gray16":
        levels = (np.asarray(picture.convert("L")).astype(np.uint16) * 257).astype(np.uint16)
        return encode(Image.fromarray(levels), "PNG"), (height, width)
    if kind == "one_pixel":
        return encode(picture.resize((1, 1)), "PNG"), (1, 1)
    if kind == "exif_rotated":
        return encode(picture, "JPEG", exif=_orientation(6)), (width, height)  # displayed turned 90°
    raise ValueError(kind)


def write_inputs(folder: Path, count: int, bad_share: float, seed: int) -> dict[str, tuple[str, object]]:
    """The images, bad ones interleaved at random; image_id → (kind, expected reason or (H, W))."""
    rng = np.random.default_rng(seed)
    kinds = [list(KINDS)[i % len(KINDS)] for i in range(round(count * bad_share))]
    kinds += ["good"] * (count - len(kinds))
    random.Random(seed).shuffle(kinds)
    folder.mkdir(parents=True)
    expected = {}
    for index, kind in enumerate(kinds):
        extension, reason = KINDS.get(kind, ("jpg", None))
        name = f"{index:05d}-{kind}.{extension}"
        data, size = input_bytes(kind, rng)
        (folder / name).write_bytes(data)
        expected[name] = (kind, reason if reason else size)
    return expected


def rows_landed(output: Path, seen: dict[str, int]) -> int:
    """Rows in the finished part files (each file's footer read once)."""
    for path in part_files(str(output)):
        if path not in seen:
            seen[path] = pq.read_metadata(path).num_rows
    return sum(seen.values())


def resident_mb(pid: int) -> float:
    """The resident set of process ``pid`` in MB (Linux /proc), 0 once it has ended."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def ray_processes() -> list[int]:
    """Pids of Ray node processes (raylet, gcs_server) on this machine."""
    found = subprocess.run(["pgrep", "-f", "raylet|gcs_server"], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found if int(pid) != os.getpid()]


def run_driver(command: list[str], output: Path, total_rows: int, kill_at: float | None, log: Path) -> dict:
    """Run the job's driver; SIGKILL it once ``kill_at`` of ``total_rows`` have landed. Samples its
    resident memory against the rows landed. Returns what happened."""
    seen: dict[str, int] = {}
    before = rows_landed(output, seen) if output.exists() else 0
    start = time.perf_counter()
    with log.open("w") as stream:
        driver = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, cwd=ROOT)
    samples: list[tuple[int, float]] = []
    killed = False
    while driver.poll() is None:
        rows = rows_landed(output, seen) if output.exists() else 0
        samples.append((rows, resident_mb(driver.pid)))
        if kill_at is not None and rows >= kill_at * total_rows and rows > before:  # killed mid-run, never idle
            driver.send_signal(signal.SIGKILL)
            driver.wait()
            killed = True
            break
        time.sleep(0.25)
    result = {
        "rows_before": before,
        "rows_at_kill": samples[-1][0] if killed else None,
        "rows_after": rows_landed(output, seen),
        "killed": killed,
        "exit_code": driver.returncode,
        "seconds": round(time.perf_counter() - start, 1),
        "samples": samples,
    }
    if killed:  # the embedded Ray shares the driver's fate; wait for its processes to go
        deadline = time.time() + 60
        while ray_processes() and time.time() < deadline:
            time.sleep(0.5)
        result["ray_processes_left_after_60s"] = len(ray_processes())
    return result


def check_rows(output: Path, expected: dict[str, tuple[str, object]], configs: int) -> dict:
    """Exactly one row per (image, config), reasons and sizes as expected, no temporaries."""
    columns = ["image_id", "config_id", "status", "error", "height", "width"]
    rows = read_results(str(output), columns=columns).to_pylist()
    pairs = Counter((row["image_id"], row["config_id"]) for row in rows)
    wrong = []
    for row in rows:
        kind, want = expected[row["image_id"]]
        if isinstance(want, str):
            if row["status"] != "error" or not (row["error"] or "").startswith(want + ":"):
                wrong.append((row["image_id"], row["status"], row["error"]))
        elif row["status"] != "ok" or (row["height"], row["width"]) != tuple(want):
            wrong.append((row["image_id"], row["status"], row["error"], row["height"], row["width"]))
    images = {image_id for image_id, _ in pairs}
    return {
        "rows": len(rows),
        "pairs_expected": len(expected) * configs,
        "pairs_twice_or_more": sum(n > 1 for n in pairs.values()),
        "images_missing": len(set(expected) - images),
        "configs_per_image": sorted(Counter(Counter(i for i, _ in pairs).values()).items()),
        "wrong_rows": wrong[:10],
        "wrong_row_count": len(wrong),
        "error_images_by_reason": dict(
            Counter(
                (r["error"] or "").split(":")[0]
                for r in {r["image_id"]: r for r in rows if r["status"] != "ok"}.values()
            )
        ),
        "temporary_files_left": sorted(str(p.relative_to(output)) for p in output.rglob("*.tmp")),
        "success_marker": (output / "_SUCCESS").exists(),
    }


def memory_profile(samples: list[tuple[int, float]], configs: int, marks: tuple[int, ...] = (500, 2000)) -> dict:
    """The driver's peak resident MB up to each mark (images done = rows / configs)."""
    peaks = {}
    for mark in marks:
        within = [mb for rows, mb in samples if rows / configs <= mark and mb > 0]
        peaks[f"peak_rss_mb_up_to_{mark}_images"] = round(max(within), 1) if within else None
    return peaks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--bad-share", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", help="folder for the inputs, outputs and driver logs (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="dsseg-soak-"))
    expected = write_inputs(work / "images", args.images, args.bad_share, args.seed)
    total_rows = args.images * len(CONFIGS)

    def command(output: Path) -> list[str]:
        return [
            sys.executable, "jobs/segment.py", "--input", str(work / "images"), "--output", str(output),
            "--backbone", "tiny", "--device", "cpu", "--batch-size", "16",
            "--config", str(work / "configs.yaml"),
        ]  # fmt: skip

    (work / "configs.yaml").write_text(json.dumps({"configs": list(CONFIGS)}))  # JSON is YAML
    chance = random.Random(args.seed)
    runs = []
    for number, kill_range in enumerate(((0.15, 0.45), (0.55, 0.80), None), start=1):
        kill_at = chance.uniform(*kill_range) if kill_range else None
        run = run_driver(command(work / "run"), work / "run", total_rows, kill_at, work / f"driver-{number}.log")
        run["kill_at_share"] = round(kill_at, 3) if kill_at else None
        run.pop("samples")
        runs.append(run)
    result = {"images": args.images, "bad_inputs": sum(k != "good" for k, _ in expected.values()), "runs": runs}
    result["checks"] = check_rows(work / "run", expected, len(CONFIGS))
    fresh = run_driver(command(work / "run-fresh"), work / "run-fresh", total_rows, None, work / "driver-fresh.log")
    result["fresh_run"] = {
        "seconds": fresh["seconds"],
        "exit_code": fresh["exit_code"],
        **memory_profile(fresh.pop("samples"), len(CONFIGS), (500, args.images)),
    }
    checks = result["checks"]
    result["passed"] = bool(
        [run["killed"] for run in runs] == [True, True, False]
        and runs[-1]["exit_code"] == 0
        and checks["rows"] == checks["pairs_expected"]
        and checks["pairs_twice_or_more"] == 0
        and checks["images_missing"] == 0
        and checks["wrong_row_count"] == 0
        and not checks["temporary_files_left"]
        and checks["success_marker"]
    )
    result["work"] = str(work)
    print(json.dumps(result, indent=2))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
