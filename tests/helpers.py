"""Plain helpers shared by the tests: the test data's paths, command-line flags of a quick CPU run and
small builders. Fixtures live in ``conftest.py``; test modules import these by name (``pythonpath``
in pyproject.toml puts ``tests/`` on the path) and never import each other or ``conftest``."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
IMAGES = DATA / "images"
GROUND_TRUTH = DATA / "gt"
TINY = ["--backbone", "tiny", "--device", "cpu"]  # command-line flags of a quick CPU run


def output_rows(ids, config="c1", status="ok", error=None):
    """OUTPUT_SCHEMA rows of ``ids`` for one config, without segments (for results-folder tests)."""
    import pyarrow as pa

    from dsseg.io.schema import OUTPUT_SCHEMA

    row = {"source": "", "width": 4, "height": 4, "method": "diffseg", "config_id": config, "status": status}
    return pa.Table.from_pylist(
        [row | {"image_id": i, "error": error, "segments": []} for i in ids], schema=OUTPUT_SCHEMA
    )


def decoded(job, ids=None):
    """The decode stage's output for ``job``'s images (all configs wanted)."""
    import pyarrow as pa

    from dsseg.io.sources import list_inputs
    from dsseg.job.decode import decode_batch

    items = [
        item | {"configs": job.config_ids()}
        for item in list_inputs(job.input)
        if ids is None or item["image_id"] in ids
    ]
    return decode_batch(pa.Table.from_pylist(items), job.preparation, job.max_pixels, job.max_image_side)


class WrittenCaptions:
    """A captioner that returns written captions (cycled) and records what it was asked."""

    def __init__(self, *captions: str, continuation: str = "standing in a field") -> None:
        self.captions, self.continuation, self.calls = captions, continuation, []

    def caption(self, images):
        self.calls.append(("caption", len(images)))
        return [self.captions[i % len(self.captions)] for i in range(len(images))]

    def complete(self, images, pairs):
        self.calls.append(("complete", list(pairs)))
        return [self.continuation for _ in pairs]
