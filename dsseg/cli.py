"""The ``dsseg`` entry point (``dsseg <command>``; ``jobs/*.py`` run it for ``ray job submit``).

    dsseg segment      segment images locally (no Ray) and write PNG overlays
    dsseg job          the Ray segment job: Parquet rows with COCO RLE masks (jobs/segment.py)
    dsseg evaluate     benchmark evaluation under the papers' protocols (jobs/evaluate.py)
    dsseg pseudolabel  pseudo-label datasets (jobs/pseudolabel.py)
    dsseg benchmark    per-stage latency and memory (jobs/benchmark.py)
    dsseg manc-study   NCut stopping rules on planted attention (jobs/manc_study.py)
    dsseg explore      local web app: re-segment one image from cached attention, browse a job's output
    dsseg compact      merge a job output's small part files into large ones (jobs/compact.py)
    dsseg export       an output for Hugging Face datasets, Label Studio, CVAT, FiftyOne, COCO or VOC (jobs/export.py)

The commands live in ``dsseg.commands`` (one module each); method and extraction parameters are
given as ``--param NAME=VALUE`` (VALUE read as JSON when it parses).
"""

from __future__ import annotations

import sys

from dsseg.commands import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
