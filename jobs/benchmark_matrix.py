"""Every method × backbone through jobs/benchmark.py, one JSON report each, within a time budget.

    python jobs/benchmark_matrix.py --device cuda --out OUT_DIR [--budget-s 540] [--quick]

Prepared for a lent GPU (short device time): the runs go in order of importance, each in its own
process with its own JSON (`OUT_DIR/<backbone>__<method>__<variant>.json`), so whatever finished before
the budget ran out comes back; a run that would start past the budget is skipped and listed.
`OUT_DIR/summary.json` collects images/s, ms per stage and peak memory per run. `--quick` runs the
`tiny` backbones on the CPU with batch size 1, to test the script itself.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BENCHMARK = str(Path(__file__).resolve().parent / "benchmark.py")
SEG4DIFF_512 = ["--param", "image_size=512"]
# (backbone, method, extra flags, variant name); batch sizes 1, 8 and auto unless the variant says.
FULL = [
    ("sd-v1-random", "diffseg", [], "b1-8-auto"),
    ("sd-v1-random", "ncut", [], "b1-8-auto"),
    ("sd-v1-random", "diffcut", [], "b1-8-auto"),
    ("sd-v1-random", "openvocab", ["--vocabulary", "voc20"], "b1-8-auto"),
    ("sd3-random", "seg4diff", [], "b1-8-auto"),
    ("sdxl-random", "diffseg", ["--param", "image_size=1024"], "b1-8-auto"),
    ("sdxl-random", "diffcut", [], "b1-8-auto"),
    ("sd3-random", "diffseg", ["--noise", "none"], "b1-8-auto"),
    ("sd-v1-random", "diffseg", ["--compile"], "compile-b1-8"),
]
QUICK = [
    ("tiny", "diffseg", ["--param", "image_size=256"], "quick"),
    ("tiny", "diffcut", ["--param", "image_size=256"], "quick"),
    ("tiny-sd3", "seg4diff", ["--param", "image_size=256"], "quick"),
]


def batch_flags(variant: str, quick: bool) -> list[str]:
    if quick:
        return ["--batch-sizes", "1", "--repeats", "1"]
    return ["--batch-sizes", "1,8" if variant.startswith("compile") else "1,8,auto", "--repeats", "3"]


def summarise(report: dict) -> list[dict]:
    """One line per batch size of a benchmark report: images/s, ms per stage, peak memory."""
    return [
        {
            "batch_size": run["batch_size"],
            "images_per_second": run["end_to_end_images_per_second"],
            "ms_per_image": run["ms_per_image"],
            "peak_device_memory_mb": run.get("peak_device_memory_mb"),
            "peak_host_memory_mb": report.get("peak_host_memory_mb"),
        }
        for run in report["runs"]
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", required=True, help="folder for the JSON reports")
    parser.add_argument("--budget-s", type=float, default=540.0, help="start no run after this many seconds")
    parser.add_argument("--quick", action="store_true", help="tiny backbones on CPU, batch size 1: test the script")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start, summary = time.monotonic(), {"device": args.device, "runs": {}, "skipped": [], "failed": {}}
    for backbone, method, extra, variant in QUICK if args.quick else FULL:
        name = f"{backbone}__{method}__{variant}"
        left = args.budget_s - (time.monotonic() - start)
        if left < 30:
            summary["skipped"].append(name)
            continue
        report_path = out / f"{name}.json"
        command = [sys.executable, BENCHMARK, "--backbone", backbone, "--method", method, "--device", args.device]
        command += [*extra, *batch_flags(variant, args.quick), "--json", str(report_path)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=left)
        except subprocess.TimeoutExpired:
            summary["failed"][name] = f"stopped at the budget ({left:.0f} s left)"
            continue
        if done.returncode != 0 or not report_path.exists():
            summary["failed"][name] = (done.stderr or done.stdout).strip().splitlines()[-1:]
            continue
        summary["runs"][name] = summarise(json.loads(report_path.read_text()))
        print(
            f"{name}: "
            + ", ".join(f"b{r['batch_size']} {r['images_per_second']} img/s" for r in summary["runs"][name]),
            flush=True,
        )
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    summary["seconds"] = round(time.monotonic() - start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: summary[k] for k in ("skipped", "failed", "seconds")}))
    return 0 if not summary["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
