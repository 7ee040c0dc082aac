"""What the explorer costs (``dsseg benchmark --explore``): per control, the time from a changed value
to a new overlay, in the server's handler and, with ``--browser``, in Chromium; and for the output
browser, opening, querying and paging a synthetic job output of ``--explore-rows`` rows.

``synthetic_output`` writes such an output (the segment job's schema, blocky label maps as COCO RLE,
per-image scores beside it): the tests and this benchmark browse it.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dsseg.io.masks import encode_labels
from dsseg.io.schema import OUTPUT_SCHEMA, TIMING_STAGES

SYNTHETIC_CONFIGS = (
    {"config_id": "aaaaaaaaaaaa", "method": "diffseg", "params": {"kl_threshold": 1.1}},
    {"config_id": "bbbbbbbbbbbb", "method": "diffseg", "params": {"kl_threshold": 0.9}},
)
SEGMENT_COUNTS = (2, 4, 8, 16)  # the label maps' segment counts, cycled over images


def blocky_labels(height: int, width: int, segments: int, seed: int) -> np.ndarray:
    """(H, W) int32 labels 0..segments−1: an 8×8 grid of blocks, each block a random segment (all used)."""
    rng = np.random.default_rng(seed)
    cells = np.concatenate([np.arange(segments), rng.integers(0, segments, 64 - segments)])
    grid = rng.permutation(cells).reshape(8, 8)
    rows = np.minimum(np.arange(height) * 8 // height, 7)
    cols = np.minimum(np.arange(width) * 8 // width, 7)
    return grid[rows[:, None], cols[None, :]].astype(np.int32)


def synthetic_output(
    output: str | Path,
    images: Sequence[tuple[str, str, int, int]],
    rows_per_config: int,
    configs: Sequence[dict] = SYNTHETIC_CONFIGS,
    rows_per_file: int = 256,
    errors_every: int = 25,
    seed: int = 0,
) -> dict[str, Any]:
    """Write an evaluation's output into ``output``: a segment job's rows, ``rows_per_config`` per
    config, in ``output``/run and per-image scores in ``output``/per_image.parquet.

    ``images``: (image_id, source path, height, width) cycled over rows (the i-th row's id is
    ``{i:07d}/{image_id}``). Every ``errors_every``-th row is an error row (reason ``corrupt``). Label maps
    take ``SEGMENT_COUNTS`` segments in turn; scores are seeded. Returns counts and the seconds taken.
    """
    start = time.perf_counter()
    output = Path(output)
    templates = {}
    for index, (_, _, height, width) in enumerate(images):
        for count in SEGMENT_COUNTS:
            segments = encode_labels(blocky_labels(height, width, count, seed + index))
            templates[(index, count)] = [
                {**s, "label": None, "score": None, "parent": None} for s in segments
            ]  # segment_id, rle, area, bbox
    rng = np.random.default_rng(seed)
    score_tables = []
    files = 0
    for c, config in enumerate(configs):
        folder = output / "run" / "segments" / f"config={config['config_id']}"
        folder.mkdir(parents=True, exist_ok=True)
        for first in range(0, rows_per_config, rows_per_file):
            numbers = range(first, min(first + rows_per_file, rows_per_config))
            rows = []
            for i in numbers:
                image_id, source, height, width = images[i % len(images)]
                failed = errors_every and i % errors_every == errors_every - 1
                count = SEGMENT_COUNTS[(i + c) % len(SEGMENT_COUNTS)]
                rows.append(
                    {
                        "image_id": f"{i:07d}/{image_id}",
                        "source": source,
                        "width": width,
                        "height": height,
                        "method": config["method"],
                        "config_id": config["config_id"],
                        "status": "error" if failed else "ok",
                        "error": "corrupt: synthetic error row" if failed else None,
                        "segments": [] if failed else templates[(i % len(images), count)],
                        "timings_ms": dict.fromkeys(TIMING_STAGES, 0.0),
                        "caption": None,
                    }
                )
            pq.write_table(pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA), folder / f"part-{first:09d}.parquet")
            files += 1
        ids = [f"{i:07d}/{images[i % len(images)][0]}" for i in range(rows_per_config)]
        failed = [bool(errors_every) and i % errors_every == errors_every - 1 for i in range(rows_per_config)]
        miou, acc = rng.uniform(0, 100, (2, rows_per_config)).tolist()
        score_tables.append(
            pa.table(
                {
                    "image_id": ids,
                    "config_id": [config["config_id"]] * rows_per_config,
                    "status": ["error" if f else "ok" for f in failed],
                    "miou": pa.array([None if f else v for f, v in zip(failed, miou)], pa.float64()),
                    "acc": pa.array([None if f else v for f, v in zip(failed, acc)], pa.float64()),
                }
            )
        )
    scores = pa.concat_tables(score_tables)
    pq.write_table(scores, output / "per_image.parquet")
    record = {
        "input": "synthetic",
        "output": str(output / "run"),
        "exif_transpose": True,
        "mask_frame": "original",
        "configs": [
            {**config, "extract_config": {"image_size": 512, "geometry": "center_crop", "antialias": False}}
            for config in configs
        ],
    }
    (output / "run" / "config.json").write_text(json.dumps(record, indent=1))
    return {"rows": rows_per_config * len(configs), "files": files, "seconds": round(time.perf_counter() - start, 2)}


def output_browser_costs(rows: int, page_size: int = 12, workdir: str | None = None) -> dict[str, Any]:
    """Open, query and page a synthetic output of ``rows`` rows (two configs): seconds and memory."""
    from dsseg.explore.outputs import OutputBrowser
    from dsseg.job.memory import resident_bytes

    folder = Path(tempfile.mkdtemp(prefix="dsseg-explore-rows-", dir=workdir))
    try:
        made = synthetic_output(folder, [("image.jpg", "missing.jpg", 512, 512)], rows // 2, errors_every=25)
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        before = resident_bytes()
        start = time.perf_counter()
        browser = OutputBrowser(str(folder))
        opened = time.perf_counter() - start
        after = resident_bytes()
        first, second = (c.config_id for c in browser.configs)
        timings = {}
        start = time.perf_counter()
        entries = browser.query(first, "miou", descending=False)
        timings["query_sort_by_score_s"] = time.perf_counter() - start
        start = time.perf_counter()
        page = entries.slice(len(entries) // 2, page_size)
        browser.rows(page)
        browser.rows_for(second, page.column("image_id").to_pylist())
        timings["page_rows_s"] = time.perf_counter() - start
        start = time.perf_counter()
        browser.query(first, "segments", descending=True, status="ok", min_segments=4)
        timings["query_filter_s"] = time.perf_counter() - start
        return {
            "rows": made["rows"],
            "part_files": made["files"],
            "output_mib": round(size / 2**20, 1),
            "write_s": made["seconds"],
            "open_s": round(opened, 2),
            "index_mib": round(browser.index.nbytes / 2**20, 1),
            "rss_growth_on_open_mib": round((after - before) / 2**20, 1),
            **{k: round(v, 3) for k, v in timings.items()},
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# The changes timed: (what, method, its controls over the defaults, tree depth)
CONTROL_CHANGES = (
    ("diffseg: first view (forward)", "diffseg", {}, None),
    *((f"diffseg: τ → {t}", "diffseg", {"kl_threshold": t}, None) for t in (0.5, 0.7, 0.9, 1.3)),
    ("diffseg: iterations → 2", "diffseg", {"kl_threshold": 0.9, "iterations": 2}, None),
    ("diffseg: refine on", "diffseg", {"kl_threshold": 0.9, "refine": True}, None),
    ("ncut: first view (forward, partition)", "ncut", {}, None),
    *((f"ncut: tree depth → {d}", "ncut", {}, d) for d in (1, 2, 3, 4)),
    ("ncut: power → 3 (new partition)", "ncut", {"power": 3}, None),
    ("ncut: power → 1 again (cached)", "ncut", {}, None),
    ("openvocab: first view (forward)", "openvocab", {}, None),
    *((f"openvocab: background → {b}", "openvocab", {"background_threshold": b}, None) for b in (0.3, 0.6)),
)
DEFAULT_CONTROLS = {
    "kl_threshold": 1.1,
    "iterations": 3,
    "refine": False,
    "power": 1,
    "stopping": "manc_ncut",
    "ncut_threshold": 0.5,
    "background_threshold": 0.5,
}


def handler_latencies(backbone: str, image: str, device: str | None, classes: str) -> list[dict[str, Any]]:
    """Each ``CONTROL_CHANGES`` through the app's own handler (re-segment, overlay PNG, legend), no browser."""
    from dsseg.explore.app import ImageTab
    from dsseg.explore.session import ImageExplorer

    tab = ImageTab(ImageExplorer(backbone, device=device))
    state = {}
    out = []
    for what, method, changed, depth in CONTROL_CHANGES:
        controls = {**DEFAULT_CONTROLS, **changed}
        args = [controls[k] for k in DEFAULT_CONTROLS]
        start = time.perf_counter()
        if not state:
            result = tab.load(image, backbone, method, *args, classes, "none")
        elif depth is None:
            result = tab.control(state, backbone, method, *args, classes, "none")
        else:
            result = tab.cut(state, backbone, method, *args, classes, "none", depth)
        out.append({"change": what, "ms": round(1000 * (time.perf_counter() - start), 1), "status": result[1]})
        state = result[5]
    return out


BROWSER_SCRIPT = """async ([selector, value]) => {
  const shown = () => document.querySelector('#overlay img');
  const before = shown() ? shown().src : null;
  const range = document.querySelector(selector + ' input[type=range]');
  const start = performance.now();
  range.value = value;
  range.dispatchEvent(new Event('input', {bubbles: true}));
  range.dispatchEvent(new Event('change', {bubbles: true}));
  await new Promise(resolve => { const check = () => { const img = shown();
      if (img && img.src !== before && img.complete && img.naturalWidth) resolve(); else requestAnimationFrame(check); };
    check(); });
  return performance.now() - start;
}"""


def browser_latencies(backbone: str, image: str, device: str | None, chromium: str, port: int) -> dict[str, Any]:
    """Slider moves in Chromium, from the input event to the new overlay loaded (ms): τ and the tree depth."""
    from playwright.sync_api import sync_playwright

    from dsseg.explore.app import build_app, launch
    from dsseg.explore.session import ImageExplorer

    app = build_app(ImageExplorer(backbone, device=device))
    launch(app, "127.0.0.1", port)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.set_input_files("#image-input input[type=file]", image)
            page.wait_for_function("document.querySelector('#status').innerText.includes('segments')", timeout=300_000)
            measured: dict[str, list[float]] = {"diffseg τ": [], "ncut tree depth": []}
            for value in ("0.5", "0.7", "0.9", "1.3", "0.6", "0.8", "1.0", "1.2"):
                measured["diffseg τ"].append(page.evaluate(BROWSER_SCRIPT, ["#kl", value]))
                time.sleep(0.2)
            page.get_by_label("ncut").check()
            page.wait_for_function(
                "document.querySelector('#status').innerText.includes('tree depth')", timeout=300_000
            )
            for value in ("1", "2", "3", "4", "2", "3", "1", "4"):
                measured["ncut tree depth"].append(page.evaluate(BROWSER_SCRIPT, ["#depth", value]))
                time.sleep(0.2)
            browser.close()
    finally:
        app.close()
    return {
        name: {"median_ms": round(statistics.median(v)), "max_ms": round(max(v)), "all_ms": [round(x) for x in v]}
        for name, v in measured.items()
    }


def explore_report(
    backbone: str,
    image: str,
    device: str | None,
    classes: str,
    rows: int | None,
    browser: bool,
    chromium: str | None,
    port: int,
) -> dict[str, Any]:
    """The explorer's costs: handler latencies, optionally in-browser ones and the output browser's."""
    import torch

    report: dict[str, Any] = {
        "backbone": backbone,
        "image": image,
        "device": device or "auto",
        "cpu_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "handler": handler_latencies(backbone, image, device, classes),
    }
    if browser:
        report["browser"] = browser_latencies(backbone, image, device, chromium or "chromium", port)
    if rows:
        report["output_browser"] = output_browser_costs(rows)
    return report
