"""Export a segment-job or pseudo-label output for Hugging Face datasets, Label Studio, CVAT, FiftyOne, COCO or VOC.

    python jobs/export.py OUTPUT --format hf|labelstudio|cvat|fiftyone|coco|voc --to DIR
                          [--config ID] [--images ROOT] [--limit N] [--overwrite]

Prints a JSON summary. The same as `dsseg export`; see docs/exports.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dsseg.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
