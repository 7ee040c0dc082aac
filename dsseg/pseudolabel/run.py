"""A pseudo-label run: check the inputs, run the segment jobs, write the VOC and COCO datasets and the reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dsseg.evaluation.exports import agnostic_segments, coco_document
from dsseg.evaluation.metrics import json_ready
from dsseg.io.files import remove_stale_temporaries
from dsseg.job.runner import init_ray, run_segment_job
from dsseg.pseudolabel.inputs import classes_for, file_stem, input_rows, ok_rows, segment_jobs
from dsseg.pseudolabel.quality import check_ground_truth, ground_truth_lookup, ground_truth_names, quality
from dsseg.pseudolabel.settings import PseudoLabelRequest
from dsseg.pseudolabel.voc import export_voc, write_local_json

SHOWN_PROBLEMS = 3  # ground-truth problems listed in the error (the count says how many more)


def make_pseudolabels(request: PseudoLabelRequest) -> dict[str, Any]:
    """Run ``request`` (resuming what earlier runs wrote into its output); returns the summary
    written to OUTPUT/summary.json, with ``complete`` False when rows are missing (rerun to
    resume). Inputs that cannot work raise ``ValueError``/``OSError`` before any image is segmented."""
    request = request.resolved()
    output = Path(request.output)
    rows = input_rows(request)
    classes = classes_for(request, rows)
    if request.gt_dir:
        names = ground_truth_names(request.gt_classes, classes)
        problems = check_ground_truth(
            [r for r in rows if r["labels"]], Path(request.gt_dir), names, request.gt_classes is not None
        )
        if problems:
            more = [f"… and {len(problems) - SHOWN_PROBLEMS} more"] if len(problems) > SHOWN_PROBLEMS else []
            raise ValueError(
                "--gt-dir does not fit the images; nothing was segmented: "
                + "; ".join(problems[:SHOWN_PROBLEMS] + more)
            )
    jobs = segment_jobs(request, rows, output)
    summaries = {kind: run_segment_job(job) for kind, job in jobs.items()}
    weak = ok_rows(jobs["weak"]) if "weak" in jobs else []
    agnostic_rows = ok_rows(jobs["agnostic"]) if "agnostic" in jobs else []
    proposals = {
        row["image_id"]: agnostic_segments(row, request.min_area, request.max_masks, not request.keep_border_background)
        for row in agnostic_rows
    }
    summary: dict[str, Any] = {
        "classes": list(classes),
        "segment_jobs": summaries,
        "weak_images": len(weak),
        "agnostic_images": len(agnostic_rows),
    }
    summary["stale_temporaries_removed"] = sum(
        remove_stale_temporaries(output / folder) for folder in ("VOCdevkit", "coco")
    )
    voc = output / "VOCdevkit" / "VOC2012"  # the layout VOC loaders (torchvision, mmsegmentation) open unchanged
    if "voc" in request.formats:
        init_ray()
        pngs = export_voc(jobs, classes, voc, request.copy_images)
        summary["voc_pngs_written"], summary["voc_pngs_removed"] = pngs["written"], pngs["removed"]
    if "coco" in request.formats:
        everything = [r | {"file_name": f"{file_stem(r['image_id'])}.jpg"} for r in weak + agnostic_rows]
        document = coco_document(everything, classes, proposals)
        write_local_json(output / "coco" / "annotations.json", document)
        summary["coco"] = {"images": len(document["images"]), "annotations": len(document["annotations"])}
    if request.gt_dir:
        summary["quality"] = quality(weak, classes, voc, Path(request.gt_dir), ground_truth_lookup(names, classes))
        preset = request.preset_setting
        if preset:
            summary["quality"]["preset"] = {"name": request.preset, "published": preset.published, "note": preset.note}
        write_local_json(output / "quality.json", json_ready(summary["quality"]))
    summary["complete"] = all(s["complete"] for s in summaries.values())
    summary = json_ready(summary)
    write_local_json(output / "summary.json", summary)
    return summary


def summary_text(summary: dict[str, Any]) -> str:
    """The summary as the command prints it: without the segment jobs' own summaries."""
    return json.dumps({k: v for k, v in summary.items() if k != "segment_jobs"}, indent=2, default=str)
