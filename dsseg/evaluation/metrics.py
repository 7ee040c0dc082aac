"""Segmentation metrics, all from per-image statistics that reduce by summation.

Unsupervised segments have no class, so they are matched to the ground-truth classes first;
the protocols differ in how (never mix them in one table):

- ``per_image`` (DiffSeg, DiffCut; DWC's "globally averaged"): exactly google/diffseg's
  ``hungarian_matching``. Per image, the confusion of **all K dataset classes** (rows) ×
  max(K, S) predicted ids (columns; S = the largest predicted id + 1, over every pixel,
  ignored ones included; ground-truth 255 excluded from the counts) goes to
  ``linear_sum_assignment(maximize=True)``, which assigns every class, absent ones included.
  TP_k = overlap of class k with its segment; FN_k = pixels of k − TP_k; FP_k = pixels of k's
  segment − TP_k, so a segment given a class absent from the image is all FP of that class, and
  segments left over when S > K are FN of their true classes only. TP, FP, FN are summed over
  the dataset before the scores.
- ``per_image_avg`` (DWC Table 6, "per-image averaged"): the same per-image TP, FP, FN, scored
  per image and then averaged over images.
- ``oracle_merged`` (DWC Table 6, "per-image averaged with an oracle which merges oversegmented
  regions"): every segment takes the majority class of its labelled pixels (many-to-one, an upper
  bound), scored per image, then averaged over images.
- ``global`` (STEGO, PiCIE): the confusion summed over the whole split, then one assignment by
  the same rule as ``per_image``; only meaningful when cluster ids mean the same in every image.
- ``semantic``: predictions are class ids already (open vocabulary): the class × class confusion.

Scores of TP, FP, FN per class: ``acc`` = ΣTP / Σ(TP + FN) (pixel accuracy over labelled
pixels), ``miou`` = mean over classes of TP / (TP + FP + FN), ``f1`` = mean of 2TP / (2TP + FP +
FN), each mean over the classes whose TP + FP + FN > 0 (``np.nanmean`` of the official code); in
percent, like the papers. In the per-image averages an image's own means therefore cover the
classes it shows plus the absent classes its segments were given (IoU 0), and an image with no
labelled pixel has no score and is left out of the average (it is still counted in ``images``).
Ground truth 255 is ignored everywhere.

BSDS500 (several human segmentations per image): ``segmentation_covering``,
``probabilistic_rand_index`` (fractions in [0, 1]) and ``variation_of_information`` (nats)
against all annotators.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from dsseg.model.vocabularies import IGNORE_LABEL

IGNORE = IGNORE_LABEL  # ground truth 255: not scored
PROTOCOLS = ("per_image", "per_image_avg", "oracle_merged", "global", "semantic")
SCORE_KEYS = ("acc", "f1", "miou")


def confusion_matrix(
    pred: np.ndarray, gt: np.ndarray, num_classes: int, num_segments: int | None = None, ignore: int = IGNORE
) -> np.ndarray:
    """(S, K) int64 pixel counts of predicted id s (rows) against true class k (columns).

    ``pred`` (H, W) ids ≥ 0; ``gt`` (H, W) classes 0..K−1 or ``ignore``; S = ``num_segments`` or
    max(pred) + 1 over every pixel (ignored ones included, as the official code). Raises
    ``ValueError`` on shape mismatch, negative ids or unknown classes.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
    if pred.size and pred.min() < 0:
        raise ValueError("predicted ids must be ≥ 0")
    valid = gt != ignore
    p, g = pred[valid].astype(np.int64), gt[valid].astype(np.int64)
    if g.size and (g.min() < 0 or g.max() >= num_classes):
        raise ValueError(
            f"ground truth holds classes outside 0..{num_classes - 1} (and {ignore} = ignore): {np.unique(g)[-3:]}"
        )
    segments = num_segments if num_segments is not None else (int(pred.max()) + 1 if pred.size else 0)
    if p.size and p.max() >= segments:
        raise ValueError(f"predicted id {p.max()} ≥ num_segments {segments}")
    return np.bincount(p * num_classes + g, minlength=segments * num_classes).reshape(segments, num_classes)


def hungarian_counts(confusion: np.ndarray) -> np.ndarray:
    """(3, K) int64 TP, FP, FN per class under google/diffseg's ``hungarian_matching`` for one
    image's (S, K) ``confusion`` (see the module docstring): the (K, max(K, S)) class × id
    matrix, every class assigned a distinct id by ``linear_sum_assignment(maximize=True)``."""
    confusion = np.asarray(confusion, dtype=np.int64)
    segments, classes = confusion.shape
    hist = np.zeros((classes, max(classes, segments)), dtype=np.int64)
    hist[:, :segments] = confusion.T
    rows, cols = linear_sum_assignment(hist, maximize=True)  # rows = 0..K−1: every class
    tp = hist[rows, cols]
    return np.stack([tp, hist[:, cols].sum(axis=0) - tp, hist.sum(axis=1) - tp])


def oracle_counts(confusion: np.ndarray) -> np.ndarray:
    """(3, K) TP, FP, FN per class when every segment with labelled pixels takes its majority
    class (many-to-one; ties go to the lower class id)."""
    confusion = np.asarray(confusion, dtype=np.int64)
    counts = np.zeros((3, confusion.shape[1]), dtype=np.int64)
    used = confusion.sum(axis=1) > 0
    majority = confusion[used].argmax(axis=1)
    hits = confusion[used, majority]
    np.add.at(counts[0], majority, hits)
    np.add.at(counts[1], majority, confusion[used].sum(axis=1) - hits)
    counts[2] = confusion.sum(axis=0) - counts[0]
    return counts


def semantic_counts(confusion: np.ndarray) -> np.ndarray:
    """(3, K) TP, FP, FN per class when predicted id k means class k: ``confusion`` (S ≥ K, K);
    pixels predicted with ids ≥ K (no class) are FN of their true class only."""
    confusion = np.asarray(confusion, dtype=np.int64)
    classes = confusion.shape[1]
    if confusion.shape[0] < classes:
        confusion = _pad_rows(confusion, classes)
    tp = np.diag(confusion[:classes])
    return np.stack([tp, confusion[:classes].sum(axis=1) - tp, confusion.sum(axis=0) - tp])


def scores_from_counts(counts: np.ndarray) -> dict:
    """(3, K) TP, FP, FN → ``acc``, ``f1``, ``miou`` in percent and ``per_class_iou`` (fractions, NaN
    for classes with TP + FP + FN = 0, which the means leave out)."""
    tp, fp, fn = np.asarray(counts, dtype=np.float64)
    union = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        f1 = np.where(union > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    labelled = (tp + fn).sum()
    present = ~np.isnan(iou)
    return {
        "acc": float(100 * tp.sum() / labelled) if labelled else float("nan"),
        "f1": float(100 * f1[present].mean()) if present.any() else float("nan"),
        "miou": float(100 * iou[present].mean()) if present.any() else float("nan"),
        "per_class_iou": iou.tolist(),
    }


def _score_vector(counts: np.ndarray) -> np.ndarray:
    """(3,) acc, f1, miou of one image's counts."""
    scores = scores_from_counts(counts)
    return np.array([scores[key] for key in SCORE_KEYS])


@dataclass
class MetricState:
    """Summable statistics of a set of images for every protocol (one per method config).

    ``hungarian``/``semantic``: (3, K) TP, FP, FN summed over images; ``confusion``: (S, K)
    segment × class counts summed over images (rows padded as images add ids); ``image_sums``:
    (2, 3) Σ over the ``labelled`` images (those with a non-ignored ground-truth pixel) of each
    image's own acc, f1, miou under the per-image Hungarian (row 0) and the oracle merge (row 1);
    ``images``: how many images.
    """

    num_classes: int
    hungarian: np.ndarray = field(default=None)  # type: ignore[assignment]
    semantic: np.ndarray | None = None
    confusion: np.ndarray = field(default=None)  # type: ignore[assignment]
    image_sums: np.ndarray = field(default=None)  # type: ignore[assignment]
    images: int = 0
    labelled: int = 0

    def __post_init__(self) -> None:
        k = self.num_classes
        self.hungarian = np.zeros((3, k), dtype=np.int64) if self.hungarian is None else self.hungarian
        self.confusion = np.zeros((0, k), dtype=np.int64) if self.confusion is None else self.confusion
        self.image_sums = np.zeros((2, 3)) if self.image_sums is None else self.image_sums

    @classmethod
    def of_image(cls, pred: np.ndarray, gt: np.ndarray, num_classes: int, semantic: bool = False) -> MetricState:
        """One image's statistics. ``semantic``: ``pred`` holds class ids (0..K−1) too."""
        confusion = confusion_matrix(pred, gt, num_classes)
        hungarian = hungarian_counts(confusion)
        labelled = int(confusion.sum() > 0)  # an all-ignored image has no scores of its own
        image_sums = np.zeros((2, 3))
        if labelled:
            image_sums = np.stack([_score_vector(hungarian), _score_vector(oracle_counts(confusion))])
        return cls(
            num_classes,
            hungarian=hungarian,
            semantic=semantic_counts(confusion) if semantic else None,
            confusion=confusion,
            image_sums=image_sums,
            images=1,
            labelled=labelled,
        )

    def __add__(self, other: MetricState) -> MetricState:
        if other.num_classes != self.num_classes:
            raise ValueError("cannot add statistics over different class sets")
        if not other.images or not self.images:
            return self if not other.images else other
        rows = max(len(self.confusion), len(other.confusion))
        confusion = _pad_rows(self.confusion, rows) + _pad_rows(other.confusion, rows)
        semantic = None if self.semantic is None or other.semantic is None else self.semantic + other.semantic
        return MetricState(
            self.num_classes,
            hungarian=self.hungarian + other.hungarian,
            semantic=semantic,
            confusion=confusion,
            image_sums=self.image_sums + other.image_sums,
            images=self.images + other.images,
            labelled=self.labelled + other.labelled,
        )

    def image_scores(self) -> dict[str, float]:
        """This state's own ``acc``, ``f1``, ``miou`` under the per-image Hungarian (for one image: its score)."""
        return dict(zip(SCORE_KEYS, _score_vector(self.hungarian).tolist()))

    def result(self, protocol: str = "per_image") -> dict:
        """``acc``, ``f1``, ``miou`` (percent) and ``per_class_iou`` under ``protocol``."""
        if protocol == "per_image":
            return scores_from_counts(self.hungarian)
        if protocol == "global":
            return scores_from_counts(hungarian_counts(self.confusion))
        if protocol == "semantic":
            if self.semantic is None:
                raise ValueError("the semantic protocol needs class-id predictions (score(..., protocol='semantic'))")
            return scores_from_counts(self.semantic)
        if protocol in ("per_image_avg", "oracle_merged"):
            sums = self.image_sums[0 if protocol == "per_image_avg" else 1]
            means = sums / self.labelled if self.labelled else np.full(3, np.nan)
            return {**dict(zip(SCORE_KEYS, means.tolist())), "per_class_iou": None}
        raise ValueError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")


def _pad_rows(matrix: np.ndarray, rows: int) -> np.ndarray:
    return np.pad(matrix, ((0, rows - len(matrix)), (0, 0)))


def score(
    preds: Sequence[np.ndarray], gts: Sequence[np.ndarray], num_classes: int, protocol: str = "per_image"
) -> dict:
    """Scores of (H, W) integer predictions against ground truth (255 = ignore) under ``protocol``
    (see the module docstring): ``acc``, ``f1``, ``miou`` in percent and ``per_class_iou``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predictions for {len(gts)} ground truths")
    state = MetricState(num_classes)
    for pred, gt in zip(preds, gts):
        state = state + MetricState.of_image(pred, gt, num_classes, semantic=protocol == "semantic")
    return state.result(protocol)


# ---- BSDS500: several human segmentations per image -------------------------------------------


def contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(|ids of a|, |ids of b|) int64 pixel counts of two labelings of the same pixels."""
    if a.shape != b.shape:
        raise ValueError(f"label maps differ in shape: {a.shape} vs {b.shape}")
    _, a_ids = np.unique(a.ravel(), return_inverse=True)
    _, b_ids = np.unique(b.ravel(), return_inverse=True)
    table = np.zeros((a_ids.max() + 1, b_ids.max() + 1), dtype=np.int64)
    np.add.at(table, (a_ids, b_ids), 1)
    return table


def _pairs(counts: np.ndarray) -> float:
    counts = np.asarray(counts, dtype=np.float64)
    return float((counts * (counts - 1) / 2).sum())


def rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of pixel pairs on which two labelings agree (same segment in both, or in neither)."""
    table = contingency(a, b)
    total = _pairs(np.array([a.size]))
    if total == 0:
        return 1.0
    together_both, together_a, together_b = _pairs(table), _pairs(table.sum(1)), _pairs(table.sum(0))
    return (total - together_a - together_b + 2 * together_both) / total


def probabilistic_rand_index(segmentation: np.ndarray, annotations: Sequence[np.ndarray]) -> float:
    """PRI: the mean over pixel pairs of the chance that an annotator agrees with the segmentation;
    linear in the annotators' pair probabilities, so the mean Rand index over annotators."""
    return float(np.mean([rand_index(segmentation, truth) for truth in annotations]))


def variation_of_information(a: np.ndarray, b: np.ndarray) -> float:
    """VoI = H(a | b) + H(b | a) in nats (0 for identical partitions)."""
    joint = contingency(a, b).astype(np.float64) / a.size
    pa, pb = joint.sum(1), joint.sum(0)
    nz = joint > 0
    mutual = (joint[nz] * np.log(joint[nz] / np.outer(pa, pb)[nz])).sum()
    entropy_a, entropy_b = -(pa * np.log(pa)).sum(), -(pb * np.log(pb)).sum()
    return float(entropy_a + entropy_b - 2 * mutual)


def segmentation_covering(segmentation: np.ndarray, truth: np.ndarray) -> float:
    """Covering of ``truth`` by ``segmentation``: Σ over true regions R of |R|·max IoU(R, R′) / N."""
    table = contingency(truth, segmentation).astype(np.float64)
    union = table.sum(1)[:, None] + table.sum(0)[None, :] - table
    best = (table / union).max(axis=1)
    return float((table.sum(1) * best).sum() / truth.size)


def bsds_scores(segmentation: np.ndarray, annotations: Sequence[np.ndarray]) -> dict:
    """Covering, PRI and VoI of one segmentation against all of an image's annotators (covering
    and VoI averaged over annotators)."""
    if not annotations:
        raise ValueError("no annotations")
    return {
        "covering": float(np.mean([segmentation_covering(segmentation, truth) for truth in annotations])),
        "pri": probabilistic_rand_index(segmentation, annotations),
        "voi": float(np.mean([variation_of_information(segmentation, truth) for truth in annotations])),
    }


# ---- Agreement of two label maps (tests, benchmark comparisons) -------------------------------


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labelings (1 = identical partitions, ~0 = chance)."""
    table = contingency(a, b)
    index, rows, cols, total = _pairs(table), _pairs(table.sum(1)), _pairs(table.sum(0)), _pairs(np.array([a.size]))
    expected = rows * cols / total
    denominator = (rows + cols) / 2 - expected
    return 1.0 if denominator == 0 else (index - expected) / denominator


def relabelled_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of pixels on which two label maps agree under a one-to-one matching of their
    ids, chosen greedily by overlap (exact when the maps are equal up to relabelling)."""
    table = contingency(a, b)
    agree = 0
    while table.size and table.max() > 0:
        i, j = np.unravel_index(table.argmax(), table.shape)
        agree += int(table[i, j])
        table[i, :] = 0
        table[:, j] = 0
    return agree / a.size


def json_ready(value):
    """``value`` with every NaN or infinite float replaced by None (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value
