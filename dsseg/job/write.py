"""Stage 3 of the segment job: labels to the mask frame and COCO RLE (CPU tasks), then Parquet
part files (``PartWriter``, on the driver).

A row that cannot be encoded becomes an error row (``encode_failed:``), never a failed task.
The encoded rows are small (RLE strings), so they flow to the driver, which writes a part file
per config once ``rows_per_file`` rows are held or the oldest has waited ``flush_seconds``:
rows land within about a minute however slow the model is, an interrupt writes what is held
before the job ends, and each row reaches the writer exactly once (Ray Data hands a retried
task's output on once).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pyarrow as pa

from dsseg.io.images import Geometry
from dsseg.io.results import write_parts
from dsseg.io.schema import OUTPUT_SCHEMA
from dsseg.job.decode import describe
from dsseg.segmentation import segmentation_from_labels
from dsseg.timing import StageTimer


def encode_rows(batch: pa.Table, mask_frame: str = "original") -> pa.Table:
    """MODEL_SCHEMA rows → labels in ``mask_frame`` → OUTPUT_SCHEMA rows (segments as COCO RLE)."""
    return pa.Table.from_pylist([encode_row(row, mask_frame) for row in batch.to_pylist()], schema=OUTPUT_SCHEMA)


class PartWriter:
    """Hold OUTPUT_SCHEMA rows and write them under ``output`` as part files (one per config)
    when ``rows_per_file`` rows are held or the first held row has waited ``flush_seconds``.

    ``add`` may be called from one thread while ``flush_if_due`` runs from a timer thread; the
    lock keeps a batch from being written twice or lost between them.
    """

    def __init__(
        self, output: str, rows_per_file: int, flush_seconds: float, shard: tuple[int, int] | None = None
    ) -> None:
        self.output = output
        self.rows_per_file = rows_per_file
        self.flush_seconds = flush_seconds
        self.shard = shard
        self.held: list[pa.Table] = []
        self.held_rows = 0
        self.held_since: float | None = None
        self.rows_written = 0
        self.files_written = 0
        self._lock = threading.Lock()

    def add(self, rows: pa.Table) -> None:
        with self._lock:
            if len(rows):
                self.held.append(rows)
                self.held_rows += len(rows)
                self.held_since = self.held_since if self.held_since is not None else time.monotonic()
            if self.held_rows >= self.rows_per_file:
                self._write()
        self.flush_if_due()

    def flush_if_due(self) -> None:
        """Write the held rows if the first has waited ``flush_seconds``."""
        with self._lock:
            if self.held_since is not None and time.monotonic() - self.held_since >= self.flush_seconds:
                self._write()

    def flush(self) -> None:
        """Write every held row now."""
        with self._lock:
            self._write()

    def _write(self) -> None:
        if not self.held_rows:
            return
        table = pa.concat_tables(self.held)
        for start in range(0, len(table), self.rows_per_file):  # files of at most rows_per_file rows
            self.files_written += len(write_parts(table.slice(start, self.rows_per_file), self.output, self.shard))
        self.rows_written += len(table)
        self.held, self.held_rows, self.held_since = [], 0, None


@contextmanager
def flushing_by_time(
    writer: PartWriter, every_seconds: float = 1.0, on_tick: Callable[[], None] | None = None
) -> Iterator[PartWriter]:
    """Check ``writer.flush_if_due`` (and call ``on_tick``, e.g. a progress line) every
    ``every_seconds`` on a daemon thread while inside, so rows land on time even while no new
    rows arrive; the held rest is written on the way out (also after an exception or an
    interrupt)."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every_seconds):
            writer.flush_if_due()
            if on_tick is not None:
                on_tick()

    thread = threading.Thread(target=run, name="dsseg-flush", daemon=True)
    thread.start()
    try:
        yield writer
    finally:
        stop.set()
        thread.join()
        writer.flush()


def encode_row(row: dict, mask_frame: str = "original") -> dict:
    """One MODEL_SCHEMA row → one OUTPUT_SCHEMA row: segments as RLE at the original size, or
    (``mask_frame="model"``) in the model-input frame, ids compacted either way."""
    out = {name: row[name] for name in OUTPUT_SCHEMA.names if name in row}
    out["segments"] = []
    if row["status"] != "ok":
        return out
    timer = StageTimer()
    try:
        shape = (row["input_h"], row["input_w"])
        labels = np.frombuffer(row["labels"], dtype=np.int32).reshape(shape)
        if mask_frame == "model":
            geometry = Geometry(shape, (0, 0, *shape), shape)  # identity: the model frame itself
        else:
            geometry = Geometry((row["height"], row["width"]), tuple(row["box"]), shape)
        segmentation = segmentation_from_labels(
            labels, geometry, row["method"], timer, row["names"], row["scores"], row["parents"], bool(row["background"])
        )
        with timer.stage("rle"):
            out["segments"] = segmentation.to_rles()
    except Exception as error:
        out.update(status="error", error=describe(error, "encode_failed"), segments=[])
    out["timings_ms"] = {**row["timings_ms"], **timer.ms}
    return out
