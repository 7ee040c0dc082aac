"""Scoring segment-job rows against a benchmark's ground truth, one row at a time, into
summable per-config statistics (the reduce stage of ``jobs/evaluate.py``).

Frames (where prediction and ground truth meet):
- ``model`` (the DiffSeg protocol, used by DiffSeg and DWC): the model-input frame. The segment
  job keeps the masks there (``mask_frame="model"``: e.g. 512² for the centre square), and the
  ground truth is brought to it by the run's own crop box and TF2's nearest-neighbour resize,
  exactly as the official code's ``process_image`` does; no prediction is ever resampled. With a
  ``score_size`` (DiffCut's protocol: 128 for its 1024² input) prediction and ground truth are then
  both taken to that grid by PyTorch's default nearest resize, as ``eval_diffcut.py`` does (its
  labels: crop, nearest-exact to 1024², nearest to 128²; its predictions are made at 128², which
  the model-frame masks repeat ×8).
- ``label``: the ground truth's own size; predictions (masks at the original image size) are
  resized to it with nearest neighbour where the image differs, as for the Weizmann horses.
Unsupervised rows are scored under every matching protocol; rows whose segments carry class
names (open vocabulary) also under ``semantic``, names mapped to the dataset's classes (unknown
names and ``ignore`` count as no class).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from dsseg.evaluation.datasets import Dataset, RegionAnnotations, Sample
from dsseg.evaluation.metrics import MetricState, bsds_scores
from dsseg.io.frames import resize_labels, resize_labels_tf, resize_labels_torch
from dsseg.io.images import GeometryMode, plan_geometry
from dsseg.io.masks import class_labels, decode_segments

Frame = Literal["model", "label"]
FRAMES: tuple[Frame, ...] = ("model", "label")
MATCHING_PROTOCOLS = ("per_image", "per_image_avg", "oracle_merged", "global")
BSDS_KEYS = ("covering", "pri", "voi")


@dataclass(frozen=True)
class ModelFrame:
    """A run's model-input frame: its extraction ``image_size`` and ``geometry`` (crop / resize mode),
    and the ``score_size`` it is scored at (the longer side of the grid prediction and ground truth
    are both sampled to; None: the model frame's own pixels)."""

    image_size: int = 512
    geometry: GeometryMode = "center_crop"
    score_size: int | None = None

    def __post_init__(self) -> None:
        if self.score_size is not None and not 1 <= self.score_size <= self.image_size:
            raise ValueError(f"score_size must be in [1, image_size={self.image_size}] or None; got {self.score_size}")


def score_grid(shape: tuple[int, int], score_size: int) -> tuple[int, int]:
    """The (h, w) grid a model-frame map of ``shape`` is scored on: its longer side ``score_size``."""
    scale = score_size / max(shape)
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def to_model_frame(labels: np.ndarray, frame: ModelFrame) -> np.ndarray:
    """(H, W) ground truth → the model-input frame (h, w): the same crop box as the image, then
    TF2's nearest-neighbour resize (the official DiffSeg label preprocessing for the centre square)."""
    geometry = plan_geometry(labels.shape, frame.image_size, frame.geometry)
    top, left, height, width = (int(v) for v in geometry.box)
    return resize_labels_tf(labels[top : top + height, left : left + width], geometry.input_hw)


def aligned(
    pred: np.ndarray, gt: np.ndarray, frame: Frame, model_frame: ModelFrame = ModelFrame()
) -> tuple[np.ndarray, np.ndarray]:
    """Prediction and ground truth on the same pixel grid under ``frame`` (see the module docstring).

    ``model``: ``pred`` must already be in the model frame (raises ``ValueError`` otherwise); with
    ``model_frame.score_size`` both are then sampled to the score grid (``resize_labels_torch``).
    """
    if frame == "model":
        truth = to_model_frame(gt, model_frame)
        if pred.shape != truth.shape:
            raise ValueError(
                f"masks of size {pred.shape} do not meet the ground truth in the model frame {truth.shape}: rows scored "
                "there must be written with mask_frame='model' (jobs/evaluate.py does this), and the label must have the "
                "image's aspect ratio (else score with --frame label)"
            )
        if model_frame.score_size is not None:
            grid = score_grid(truth.shape, model_frame.score_size)
            pred, truth = resize_labels_torch(pred, grid), resize_labels_torch(truth, grid)
        return pred, truth
    if frame == "label":
        return (resize_labels(pred, gt.shape) if pred.shape != gt.shape else pred), gt
    raise ValueError(f"frame must be one of {FRAMES}; got {frame!r}")


def class_ids(labels: np.ndarray, segments: Sequence[dict], class_names: Sequence[str]) -> np.ndarray | None:
    """Segment ids → dataset class ids by the segments' names (None when no segment is named);
    names that are not classes (e.g. ``ignore``) become K, "no class"."""
    if not any(segment.get("label") for segment in segments):
        return None
    return class_labels(labels, segments, class_names, other=len(class_names))


@dataclass
class ConfigScores:
    """Everything summed for one method config: matching statistics, open-vocabulary statistics
    (rows with named segments), BSDS sums and counts of scored and failed rows."""

    num_classes: int
    matching: MetricState = field(default=None)  # type: ignore[assignment]
    semantic: MetricState = field(default=None)  # type: ignore[assignment]
    bsds: np.ndarray = field(default_factory=lambda: np.zeros(3))
    scored: int = 0
    failed: int = 0

    def __post_init__(self) -> None:
        self.matching = self.matching or MetricState(self.num_classes)
        self.semantic = self.semantic or MetricState(self.num_classes)

    def add(self, other: ConfigScores) -> ConfigScores:
        return ConfigScores(
            self.num_classes,
            self.matching + other.matching,
            self.semantic + other.semantic,
            self.bsds + other.bsds,
            self.scored + other.scored,
            self.failed + other.failed,
        )

    def results(self) -> dict[str, Any]:
        """Every protocol's ``acc``/``f1``/``miou`` (percent), per-class IoU and the counts."""
        out: dict[str, Any] = {"images": self.scored, "failed": self.failed}
        if self.matching.images:
            out.update({protocol: self.matching.result(protocol) for protocol in MATCHING_PROTOCOLS})
        if self.semantic.images:
            out["semantic"] = self.semantic.result("semantic")
        if self.scored and not self.matching.images:
            out["bsds"] = dict(zip(BSDS_KEYS, (self.bsds / self.scored).tolist()))
        return out


def score_row(
    row: dict, dataset: Dataset, sample: Sample, frame: Frame, model_frame: ModelFrame = ModelFrame()
) -> tuple[ConfigScores, dict[str, Any]]:
    """One output row (OUTPUT_SCHEMA) → (its summable scores, its per-image record)."""
    record: dict[str, Any] = {
        "image_id": row["image_id"],
        "config_id": row["config_id"],
        "method": row["method"],
        "status": row["status"],
    }
    scores = ConfigScores(dataset.num_classes)
    if row["status"] != "ok":
        scores.failed = 1
        record["error"] = row["error"]
        return scores, record
    labels = decode_segments(row["segments"])  # at its masks' own size: the original image's or the model frame's
    record["segments"] = len(row["segments"])
    ground_truth = dataset.ground_truth(sample)
    if isinstance(ground_truth, RegionAnnotations):
        pairs = [aligned(labels, truth, frame, model_frame) for truth in ground_truth.annotators]
        values = bsds_scores(pairs[0][0], [truth for _, truth in pairs])
        scores.bsds = np.array([values[key] for key in BSDS_KEYS])
        scores.scored = 1
        return scores, record | values
    gt = ground_truth.labels.astype(np.int64)
    pred, truth = aligned(labels, gt, frame, model_frame)
    scores.matching = MetricState.of_image(pred, truth, dataset.num_classes)
    own = scores.matching.image_scores()
    record.update(acc=own["acc"], miou=own["miou"])
    classes = class_ids(labels, row["segments"], dataset.class_names)
    if classes is not None:
        pred_classes, truth = aligned(classes, gt, frame, model_frame)
        scores.semantic = MetricState.of_image(pred_classes, truth, dataset.num_classes, semantic=True)
        record["semantic_miou"] = scores.semantic.result("semantic")["miou"]
    scores.scored = 1
    return scores, record


RECORD_SCHEMA_FIELDS = (
    ("image_id", "string"), ("config_id", "string"), ("method", "string"), ("status", "string"), ("error", "string"),
    ("segments", "int32"), ("acc", "float64"), ("miou", "float64"), ("semantic_miou", "float64"),
    ("covering", "float64"), ("pri", "float64"), ("voi", "float64"),
)  # fmt: skip


def record_schema() -> pa.Schema:
    """The per-image records of ``ScoreParts`` (``scores``: a pickled ``ConfigScores``)."""
    return pa.schema([(name, getattr(pa, kind)()) for name, kind in RECORD_SCHEMA_FIELDS] + [("scores", pa.binary())])


class ScoreParts:
    """Ray Data UDF: part-file paths → one per-image record per row of the dataset's first
    ``limit`` images (rows of other images are skipped), with its pickled ``ConfigScores`` in
    ``scores``. Loads the dataset reader once per actor."""

    def __init__(
        self,
        dataset: str,
        root: str,
        options: dict[str, Any],
        frame: Frame,
        model_frame: ModelFrame,
        limit: int | None = None,
    ) -> None:
        from dsseg.evaluation.datasets import load_dataset

        self.dataset = load_dataset(dataset, root, **options)
        self.samples = {sample.image_id: sample for sample in self.dataset.samples(limit)}
        self.image_ids = pa.array(list(self.samples), pa.string())
        self.frame, self.model_frame = frame, model_frame

    def __call__(self, batch):
        import pickle

        from dsseg.io.results import read_part

        records = []
        for path in batch.column("path").to_pylist():
            for row in read_part(path, image_ids=self.image_ids).to_pylist():
                try:
                    scores, record = score_row(
                        row, self.dataset, self.samples[row["image_id"]], self.frame, self.model_frame
                    )
                except Exception as error:  # a broken label file fails its row, not the evaluation
                    scores, record = ConfigScores(self.dataset.num_classes, failed=1), {
                        "image_id": row["image_id"], "config_id": row["config_id"], "method": row["method"],
                        "status": "error", "error": f"score_failed: {type(error).__name__}: {error}",
                    }  # fmt: skip
                records.append(record | {"scores": pickle.dumps(scores)})
        return pa.Table.from_pylist(records, schema=record_schema())


def evaluate_parts(
    paths: Sequence[str],
    dataset: str,
    root: str,
    options: dict[str, Any],
    frame: Frame,
    model_frame: ModelFrame = ModelFrame(),
    workers: int = 1,
    limit: int | None = None,
):
    """Score the rows of ``paths`` that belong to the dataset's first ``limit`` images on Ray (an
    actor pool of ``workers``) and sum per config on the driver, streaming: returns
    ({config_id: ConfigScores}, per-image records as a pyarrow Table)."""
    import pickle

    import ray

    items = ray.data.from_items([{"path": path} for path in paths], override_num_blocks=max(1, min(len(paths), 64)))
    scored = items.map_batches(
        ScoreParts,
        fn_constructor_kwargs={
            "dataset": dataset,
            "root": str(root),
            "options": options,
            "frame": frame,
            "model_frame": model_frame,
            "limit": limit,
        },  # fmt: skip
        compute=ray.data.ActorPoolStrategy(size=max(1, min(workers, len(paths)))),
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=1,
    )
    totals: dict[str, ConfigScores] = {}
    tables = []
    for batch in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
        for config, blob in zip(batch.column("config_id").to_pylist(), batch.column("scores").to_pylist()):
            scores = pickle.loads(blob)
            totals[config] = totals[config].add(scores) if config in totals else scores
        tables.append(batch.drop_columns(["scores"]))
    records = pa.concat_tables(tables) if tables else record_schema().empty_table().drop_columns(["scores"])
    return totals, records
