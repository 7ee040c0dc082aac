"""Scale: a ten-million-row manifest, a fresh job interrupted, a resume over a million done rows,
reading and compacting that output.

    python tests/scale.py [--rows 10000000] [--done 1000000] [--work DIR] [--keep]
                          [--run-seconds 30] [--skip-fresh] [--skip-resume]

Not a CI test (about ten to twenty minutes on two cores at the defaults). It measures what grows
with the input and the output, not the model (tiny backbone, 128² model input, CPU):

1. a synthetic Parquet manifest of ``--rows`` rows (``img/000000123.jpg`` ids, their ``uri``
   cycling over the JPEGs of ``tests/data/images``; one is truncated, so some rows are error
   rows), written in row groups of a million rows with bounded memory;
2. a fresh ``dsseg job`` over it as a separate driver process: the time to its first part file and
   the driver's peak resident memory until then, ``--run-seconds`` more, then SIGINT to the driver
   (as a terminal's Ctrl-C): its status, last line and the time it took to exit; the rows written
   and whether a (config, image) pair repeats;
3. a synthetic output of ``--done`` rows (the manifest's first ids, the job's config id, parts of
   256 rows as the job writes them), and the same job resumed on it: the time to its first new part
   file, the driver's memory, and whether it redid a done image (skipped with ``--skip-resume``);
4. reading that output (``read_results`` of two columns and of all) and indexing it for ``dsseg
   explore`` (``OutputBrowser``), each in a subprocess with its peak memory;
5. ``dsseg compact`` on it: seconds, files before and after, peak memory; the read again.

Prints one JSON document (progress goes to stderr); exits 1 when a check fails: a driver's status
not 130 or its last line not the interrupt line, a traceback, a repeated pair, a resumed done image,
a first row later than 120 s, a driver peak over 1500 MB. ``--work`` keeps everything in DIR (it
must be new or empty) and is never deleted; the default temporary folder is deleted at the end
unless ``--keep``. Every wait has a time limit; a driver that does not end is killed with its
process group and the Ray processes it started.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dsseg.io.images import InputError, decode_image  # noqa: E402
from dsseg.io.masks import encode_labels  # noqa: E402
from dsseg.io.results import part_files, read_results, write_config, write_parts  # noqa: E402
from dsseg.io.schema import OUTPUT_SCHEMA, TIMING_STAGES  # noqa: E402

ROW_GROUP_ROWS = 1_000_000  # manifest row group (a plan task's chunk)
ROWS_PER_FILE = 256  # the job's default rows_per_file
IMAGE_SIZE = 128
SAMPLE_SECONDS = 0.2
FIRST_ROW_LIMIT_S = 120  # check
DRIVER_RSS_LIMIT_MB = 1500  # check
FIRST_ROW_WAIT_S = 600  # give up waiting for a first row after this
INTERRUPT_WAIT_S = 120  # a driver still running this long after SIGINT is killed
RAY_EXIT_WAIT_S = 30  # the Ray processes a driver started, waited for after it exits
SUBPROCESS_TIMEOUT_S = 1800  # reading, indexing, compacting
INTERRUPT_LINE = re.compile(r"^interrupted: (\d+) rows? written to (.+); run the same command to resume$")
START = time.perf_counter()


def say(text: str) -> None:
    """Progress on stderr (the JSON document goes to stdout)."""
    print(f"[scale {time.perf_counter() - START:7.1f}s] {text}", file=sys.stderr, flush=True)


def child_env() -> dict[str, str]:
    """The environment of every subprocess: this checkout's dsseg first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def proc_status_mb(pid: int, key: str) -> float | None:
    """``VmRSS`` or ``VmHWM`` of process ``pid`` in MB (Linux /proc), None once it has ended."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def start_time(pid: int) -> int | None:
    """The start time (clock ticks after boot) of ``pid``, which tells a process from a later one with its pid."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def descendants(pid: int) -> dict[int, int]:
    """{pid: start time} of every process below ``pid`` (the Ray processes a driver started)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found: dict[int, int] = {}
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found and (started := start_time(child)) is not None:
                found[child] = started
                stack.append(child)
    return found


def alive(processes: dict[int, int]) -> list[int]:
    """Those of ``processes`` ({pid: start time}) still running (not zombies)."""
    left = []
    for pid, started in processes.items():
        if start_time(pid) != started:
            continue
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            left.append(pid)
    return left


def load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


# ---------------------------------------------------------------------------------------------- inputs


def check_images() -> list[dict]:
    """The JPEGs under tests/data/images and whether dsseg decodes each (a failed one makes error rows)."""
    images = []
    for path in sorted((ROOT / "tests" / "data" / "images").rglob("*.jpg")):
        entry: dict = {"uri": str(path)}
        try:
            _, (height, width) = decode_image(path.read_bytes())
            entry.update(decodes=True, height=height, width=width)
        except InputError as error:
            entry.update(decodes=False, error=str(error)[:200])
        images.append(entry)
    return images


def image_id(number: int) -> str:
    return f"img/{number:09d}.jpg"


def number_of(ids: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The numbers in ids ``img/000000123.jpg``."""
    return pc.cast(pc.utf8_slice_codeunits(ids, 4, 13), pa.int64()).to_numpy()


def write_manifest(path: Path, rows: int, uris: list[str]) -> dict:
    """A Parquet manifest of ``rows`` rows (image_id, uri: ``uris`` in turn), a row group per million rows."""
    start = time.perf_counter()
    schema = pa.schema([("image_id", pa.string()), ("uri", pa.string())])
    choices = pa.array(uris, pa.string())
    with pq.ParquetWriter(path, schema) as writer:
        for first in range(0, rows, ROW_GROUP_ROWS):
            numbers = np.arange(first, min(first + ROW_GROUP_ROWS, rows))
            chunk = pa.table(
                {
                    "image_id": pa.array([image_id(n) for n in numbers.tolist()], pa.string()),
                    "uri": choices.take(pa.array(numbers % len(uris))),
                },
                schema=schema,
            )
            writer.write_table(chunk, row_group_size=ROW_GROUP_ROWS)
    metadata = pq.read_metadata(path)
    return {
        "path": str(path),
        "rows": metadata.num_rows,
        "row_groups": metadata.num_row_groups,
        "mib": round(path.stat().st_size / 2**20, 1),
        "write_s": round(time.perf_counter() - start, 2),
    }


def job_config_id(manifest: Path, output: Path):
    """(the SegmentJob the command line builds, its one config id)."""
    from dsseg.job.config import SegmentJob
    from dsseg.spec import MethodSpec

    job = SegmentJob(
        input=str(manifest),
        output=str(output),
        backbone="tiny",
        device="cpu",
        configs=[MethodSpec("diffseg", {"image_size": IMAGE_SIZE})],
    )
    (config_id,) = job.config_ids()
    return job, config_id


def write_done_rows(output: Path, images: list[dict], done: int, config_id: str) -> dict:
    """``done`` rows of the output schema for the manifest's first ``done`` images, in parts of
    ``ROWS_PER_FILE`` rows written by ``write_parts`` (as the job writes them): an ok row with one
    segment covering the image, or the error row of an image that does not decode."""
    start = time.perf_counter()
    templates = []
    for image in images:
        ok = image["decodes"]
        segments = []
        if ok:
            labels = np.zeros((image["height"], image["width"]), dtype=np.int32)
            segments = [{**s, "label": None, "score": None, "parent": None} for s in encode_labels(labels)]
        templates.append(
            {
                "image_id": "",
                "source": image["uri"],
                "width": image.get("width"),
                "height": image.get("height"),
                "method": "diffseg",
                "config_id": config_id,
                "status": "ok" if ok else "error",
                "error": None if ok else image["error"],
                "segments": segments,
                "timings_ms": dict.fromkeys(TIMING_STAGES, 0.0),
                "caption": None,
            }
        )
    template = pa.Table.from_pylist(templates, schema=OUTPUT_SCHEMA)
    column = OUTPUT_SCHEMA.get_field_index("image_id")
    files = 0
    for first in range(0, done, ROWS_PER_FILE):
        numbers = np.arange(first, min(first + ROWS_PER_FILE, done))
        part = template.take(pa.array(numbers % len(images)))
        part = part.set_column(column, "image_id", pa.array([image_id(n) for n in numbers.tolist()], pa.string()))
        files += len(write_parts(part, str(output)))
    return {"rows": done, "files": files, "write_s": round(time.perf_counter() - start, 2)}


# ---------------------------------------------------------------------------------------------- the driver


def part_names(output: Path) -> set[str]:
    """Relative paths of the finished part files under ``output/segments`` (not hidden temporaries)."""
    names = set()
    segments = output / "segments"
    if not segments.is_dir():
        return names
    for folder in os.scandir(segments):
        if folder.is_dir() and folder.name.startswith("config="):
            for entry in os.scandir(folder.path):
                if entry.name.startswith("part-") and entry.name.endswith(".parquet"):
                    names.add(f"{folder.name}/{entry.name}")
    return names


def run_driver(command: list[str], output: Path, logs: Path, run_seconds: float) -> dict:
    """Run the job's driver until its first new part file and ``run_seconds`` more, then SIGINT
    it; its resident memory sampled every ``SAMPLE_SECONDS``, its stderr lines timed."""
    existing = part_names(output)
    stdout_path, stderr_path = logs.with_suffix(".stdout"), logs.with_suffix(".stderr")
    lines: list[tuple[float, str]] = []
    start = time.perf_counter()
    with stdout_path.open("wb") as stdout:
        driver = subprocess.Popen(
            command, stdout=stdout, stderr=subprocess.PIPE, cwd=ROOT, env=child_env(), start_new_session=True
        )

    def read_stderr() -> None:
        with stderr_path.open("wb") as copy:
            for raw in iter(driver.stderr.readline, b""):
                lines.append((time.perf_counter() - start, raw.decode(errors="replace").rstrip("\n")))
                copy.write(raw)
                copy.flush()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    result: dict = {"command": " ".join(command), "pid": driver.pid}
    peak = peak_to_first = 0.0
    first_row = None
    ray_processes: dict[int, int] = {}
    try:
        while driver.poll() is None:
            now = time.perf_counter() - start
            rss = proc_status_mb(driver.pid, "VmRSS") or 0.0
            peak = max(peak, rss)
            if first_row is None:
                peak_to_first = peak
                new = part_names(output) - existing
                if new:
                    first_row = now
                    result["time_to_first_row_s"] = round(now, 1)
                    result["first_part_file"] = sorted(new)[0]
                    result["driver_peak_rss_mb_to_first_row"] = round(peak_to_first, 1)
                    result["driver_hwm_mb_at_first_row"] = proc_status_mb(driver.pid, "VmHWM")
                    say(f"first part file after {now:.1f}s, driver peak {peak_to_first:.0f} MB")
                elif now > FIRST_ROW_WAIT_S:
                    say(f"no part file after {now:.0f}s: interrupting")
                    break
            elif now - first_row >= run_seconds:
                break
            time.sleep(SAMPLE_SECONDS)
        result["driver_peak_rss_mb"] = round(peak, 1)
        if driver.poll() is not None:
            result["ended_by_itself"] = True
            result["exit_status"] = driver.returncode
        else:
            result["driver_hwm_mb_before_interrupt"] = proc_status_mb(driver.pid, "VmHWM")
            result["driver_rss_mb_before_interrupt"] = proc_status_mb(driver.pid, "VmRSS")
            result["part_files_before_interrupt"] = len(part_names(output) - existing)
            ray_processes = descendants(driver.pid)
            result["ray_processes_at_interrupt"] = len(ray_processes)
            sent = time.perf_counter()
            os.kill(driver.pid, signal.SIGINT)  # the driver only, as a terminal's Ctrl-C here
            say("SIGINT sent to the driver")
            try:
                driver.wait(timeout=INTERRUPT_WAIT_S)
            except subprocess.TimeoutExpired:
                result["killed_after_interrupt"] = True
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait()
            result["interrupt_to_exit_s"] = round(time.perf_counter() - sent, 2)
            result["exit_status"] = driver.returncode
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        deadline = time.time() + RAY_EXIT_WAIT_S
        while alive(ray_processes) and time.time() < deadline:
            time.sleep(0.5)
        left = alive(ray_processes)
        result["ray_processes_left_after_exit"] = len(left)
        for pid in left:  # ours, by pid (checked by start time)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(driver.pid, signal.SIGKILL)  # anything else left in the driver's group
        except (ProcessLookupError, PermissionError):
            pass
        reader.join(timeout=10)
    result["seconds"] = round(time.perf_counter() - start, 1)
    text = [line for _, line in lines]
    last = next((line for line in reversed(text) if line.strip()), "")
    result["last_stderr_line"] = last
    match = INTERRUPT_LINE.match(last)
    result["interrupt_line_ok"] = bool(match) and match.group(2) == str(output)
    result["rows_said_written"] = int(match.group(1)) if match else None
    result["traceback_seen"] = any("Traceback" in line for line in text) or "Traceback" in stdout_path.read_text(
        errors="replace"
    )
    progress = [t for t, line in lines if line.startswith("dsseg: ") and " images" in line]
    result["first_progress_line_s"] = round(progress[0], 1) if progress else None
    result["stderr_first_lines"] = [[round(t, 2), line[:300]] for t, line in lines[:10]]
    result["stderr_lines"] = len(lines)
    result["new_part_files"] = sorted(part_names(output) - existing)
    return result


def job_command(manifest: Path, output: Path) -> list[str]:
    return [
        sys.executable, "-m", "dsseg.cli", "job", "--input", str(manifest), "--output", str(output),
        "--backbone", "tiny", "--param", f"image_size={IMAGE_SIZE}", "--device", "cpu",
    ]  # fmt: skip


def repeated_pairs(table: pa.Table) -> int:
    """How many (config_id, image_id) pairs have more than one row."""
    if not len(table):
        return 0
    counts = table.group_by(["config_id", "image_id"]).aggregate([([], "count_all")])
    return int(pc.sum(pc.greater(counts.column("count_all"), 1)).as_py() or 0)


def output_rows(output: Path) -> pa.Table:
    try:
        return read_results(str(output), columns=["image_id", "config_id", "status"])
    except FileNotFoundError:
        return pa.table(
            {"image_id": [], "config_id": [], "status": []},
            schema=pa.schema([(n, pa.string()) for n in ("image_id", "config_id", "status")]),
        )


# ---------------------------------------------------------------------------------------------- subprocesses


def run_measured(command: list[str], timeout: float) -> dict:
    """Run ``command`` (in its own process group, killed after ``timeout`` seconds): its seconds,
    exit status, stdout (parsed as JSON where it is) and stderr's tail when it failed."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen(command, stdout=out, stderr=err, cwd=ROOT, env=child_env(), start_new_session=True)
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    result: dict = {"exit_status": child.returncode, "wall_s": round(seconds, 2)}
    peak = re.search(r"^scale-peak-rss-mb (\S+)$", stderr, re.MULTILINE)
    if peak:
        result["peak_rss_mb"] = float(peak.group(1))
    try:
        result["output"] = json.loads(stdout)
    except ValueError:
        result["stdout_tail"] = stdout[-1000:]
    if child.returncode:
        result["stderr_tail"] = stderr[-2000:]
    return result


# The subprocesses report their peak resident memory as VmHWM (of their own address space). Not
# ru_maxrss: Linux carries the parent's peak into a child's ru_maxrss across fork and exec, so every
# child of this (large) process would report at least the parent's peak.
PEAK = "[int(line.split()[1]) / 1024 for line in open('/proc/self/status') if line.startswith('{}:')][0]"

READ_SNIPPET = f"""
import json, sys, time
from dsseg.io.results import read_results
columns = json.loads(sys.argv[2])
before = {PEAK.format("VmRSS")}
start = time.perf_counter()
table = read_results(sys.argv[1], columns=columns)
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": round(seconds, 2), "rows": table.num_rows, "table_mib": round(table.nbytes / 2**20, 1),
                  "rss_mb_after_imports": round(before, 1), "peak_rss_mb": round({PEAK.format("VmHWM")}, 1)}}))
"""

INDEX_SNIPPET = f"""
import json, sys, time
from dsseg.explore.outputs import OutputBrowser
before = {PEAK.format("VmRSS")}
start = time.perf_counter()
browser = OutputBrowser(sys.argv[1])
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": round(seconds, 2), "rows": browser.index.num_rows, "files": len(browser.files),
                  "index_mib": round(browser.index.nbytes / 2**20, 1), "rss_mb_after_imports": round(before, 1),
                  "peak_rss_mb": round({PEAK.format("VmHWM")}, 1)}}))
"""

# ``python -m dsseg.cli ARGS`` as it is, then its peak memory on a line of stderr.
CLI_SNIPPET = f"""
import os, runpy, sys
sys.argv = ["dsseg", *sys.argv[1:]]
try:
    runpy.run_module("dsseg.cli", run_name="__main__", alter_sys=True)
finally:
    sys.stderr.flush()
    os.write(2, ("scale-peak-rss-mb %.1f\\n" % {PEAK.format("VmHWM")}).encode())
"""


def read_cost(output: Path, columns: list[str] | None) -> dict:
    say(f"reading {output} columns={columns}")
    return run_measured([sys.executable, "-c", READ_SNIPPET, str(output), json.dumps(columns)], SUBPROCESS_TIMEOUT_S)


# ---------------------------------------------------------------------------------------------- main


def fresh_phase(manifest: Path, work: Path, run_seconds: float) -> dict:
    output = work / "out1"
    say("fresh job")
    run = run_driver(job_command(manifest, output), output, work / "driver-fresh", run_seconds)
    rows = output_rows(output)
    run["rows_in_output"] = rows.num_rows
    run["repeated_pairs"] = repeated_pairs(rows)
    run["rows_by_status"] = {c["values"]: c["counts"] for c in pc.value_counts(rows.column("status")).to_pylist()}
    run["config_folders"] = sorted(p.name.split("=", 1)[1] for p in (output / "segments").glob("config=*"))
    run["new_part_files"] = len(run["new_part_files"])
    return run


def resume_phase(manifest: Path, output: Path, work: Path, done: int, prewritten: set[str], run_seconds: float) -> dict:
    say("resumed job")
    run = run_driver(job_command(manifest, output), output, work / "driver-resume", run_seconds)
    new_files = [f for f in run.pop("new_part_files") if f not in prewritten]
    run["new_part_files"] = len(new_files)
    new = [pq.read_table(output / "segments" / name, columns=["image_id", "config_id"]) for name in new_files]
    new_rows = pa.concat_tables(new) if new else pa.table({"image_id": pa.array([], pa.string())})
    numbers = number_of(new_rows.column("image_id")) if len(new_rows) else np.empty(0, np.int64)
    run["new_rows"] = int(len(numbers))
    run["new_rows_of_done_images"] = int((numbers < done).sum())
    run["new_rows_first_last_image"] = [int(numbers.min()), int(numbers.max())] if len(numbers) else None
    rows = output_rows(output)
    run["rows_in_output"] = rows.num_rows
    run["repeated_pairs"] = repeated_pairs(rows)
    return run


def interrupted_run_checks(name: str, run: dict, rows_written: int) -> dict[str, bool]:
    """The checks of one interrupted job run (``fresh_phase`` or ``resume_phase``'s result), each
    named ``<name>_<check>``; ``rows_written``: the rows the run itself added."""
    peak = max(run["driver_peak_rss_mb"], run.get("driver_hwm_mb_before_interrupt") or 0)
    checks = {
        "exit_130": run.get("exit_status") == 130,
        "interrupt_line": run["interrupt_line_ok"],
        "rows_as_said": run["rows_said_written"] == rows_written,
        "no_traceback": not run["traceback_seen"],
        "no_repeated_pair": run["repeated_pairs"] == 0,
        "first_row_within_120s": run.get("time_to_first_row_s", 1e9) <= FIRST_ROW_LIMIT_S,
        "driver_peak_under_1500mb": peak <= DRIVER_RSS_LIMIT_MB,
    }
    return {f"{name}_{check}": value for check, value in checks.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000, help="manifest rows")
    parser.add_argument("--done", type=int, default=1_000_000, help="rows of the synthetic output resumed")
    parser.add_argument("--work", help="folder for everything (new or empty; kept); default: a temporary one")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--run-seconds", type=float, default=30.0, help="seconds a job runs after its first row")
    parser.add_argument("--skip-fresh", action="store_true", help="no fresh job (part 2)")
    parser.add_argument("--skip-resume", action="store_true", help="no resumed job (part 3's job run)")
    args = parser.parse_args()
    if not 0 < args.done <= args.rows:
        parser.error("--done must be in 1..--rows")
    if args.work:
        work = Path(args.work).absolute()
        if work.exists() and any(work.iterdir()):
            parser.error(f"--work {work} is not empty")
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="dsseg-scale-"))
    result: dict = {
        "args": {k: v for k, v in vars(args).items() if k != "work"},
        "machine": {"cpus": os.cpu_count(), "load_average_start": load_average()},
        "work": str(work),
    }
    checks: dict[str, bool] = {}
    try:
        images = check_images()
        result["images"] = images
        say(f"images: {[(Path(i['uri']).name, i['decodes']) for i in images]}")
        manifest = work / "manifest.parquet"
        say(f"writing a manifest of {args.rows} rows")
        result["manifest"] = write_manifest(manifest, args.rows, [image["uri"] for image in images])
        say(f"manifest: {result['manifest']}")

        out1, out2 = work / "out1", work / "out2"
        job, config_id = job_config_id(manifest, out2)
        result["config_id"] = config_id
        if not args.skip_fresh:
            fresh = fresh_phase(manifest, work, args.run_seconds)
            result["fresh"] = fresh
            checks.update(interrupted_run_checks("fresh", fresh, fresh["rows_in_output"]))
            result["config_id_matches_job_output"] = fresh["config_folders"] == [config_id]
            if fresh["config_folders"] and fresh["config_folders"] != [config_id]:
                say(f"config id {config_id} differs from the job's {fresh['config_folders']}: using the job's")
                config_id = json.loads((out1 / "config.json").read_text())["configs"][0]["config_id"]
                result["config_id"] = config_id

        say(f"writing {args.done} done rows for config {config_id}")
        result["done_output"] = write_done_rows(out2, images, args.done, config_id)
        write_config(str(out2), job.record())
        prewritten = part_names(out2)
        say(f"done rows: {result['done_output']}")
        if not args.skip_resume:
            resume = resume_phase(manifest, out2, work, args.done, prewritten, args.run_seconds)
            result["resume"] = resume
            checks.update(interrupted_run_checks("resume", resume, resume["new_rows"]))
            checks["resume_no_done_image_redone"] = resume["new_rows_of_done_images"] == 0

        reading = {
            "part_files": len(part_files(str(out2))),
            "output_mib": round(sum(f.stat().st_size for f in (out2 / "segments").rglob("*.parquet")) / 2**20, 1),
            "read_image_id_status": read_cost(out2, ["image_id", "status"]),
            "read_all_columns": read_cost(out2, None),
        }
        say("indexing for dsseg explore")
        reading["explore_index"] = run_measured([sys.executable, "-c", INDEX_SNIPPET, str(out2)], SUBPROCESS_TIMEOUT_S)
        result["reading"] = reading
        say("compacting")
        compaction = run_measured([sys.executable, "-c", CLI_SNIPPET, "compact", str(out2)], SUBPROCESS_TIMEOUT_S)
        compaction["part_files_after"] = len(part_files(str(out2)))
        compaction["read_image_id_status_after"] = read_cost(out2, ["image_id", "status"])
        compaction["rows_after"] = compaction["read_image_id_status_after"].get("output", {}).get("rows")
        result["compaction"] = compaction
        checks["compaction_exit_0"] = compaction["exit_status"] == 0
        checks["compaction_kept_rows"] = compaction["rows_after"] == reading["read_image_id_status"].get(
            "output", {}
        ).get("rows")
    finally:
        result["machine"]["load_average_end"] = load_average()
        result["checks"] = checks
        result["passed"] = bool(checks) and all(checks.values())
        result["seconds"] = round(time.perf_counter() - START, 1)
        if not args.work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
            result["work"] = None
        print(json.dumps(result, indent=2))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
