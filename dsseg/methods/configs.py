"""The parameters of every method, as frozen configs validated at construction (``ConfigError``
names the parameter). Torch-free, so settings, run files and presets are checked (and listed)
without loading a model; each method's module imports its config from here."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from numbers import Real
from typing import Literal

from dsseg.errors import ConfigError
from dsseg.methods.dense_crf import CRF_INSTALL, crf_available
from dsseg.params import ADDED, OWN_TYPE_CHECK

GraphMode = Literal["random_walk", "dot", "cosine", "diffcut"]
Stopping = Literal["manc_ncut", "manc_mincut", "threshold"]
Upsampling = Literal["cosine", "nearest"]
EigenSolver = Literal["auto", "dense_laplacian"]
GRAPHS: tuple[GraphMode, ...] = ("random_walk", "dot", "cosine", "diffcut")
STOPPINGS: tuple[Stopping, ...] = ("manc_ncut", "manc_mincut", "threshold")
UPSAMPLINGS: tuple[Upsampling, ...] = ("cosine", "nearest")
EIGEN_SOLVERS: tuple[EigenSolver, ...] = ("auto", "dense_laplacian")
DEFAULT_LEVELS = 3  # resolutions None → the three largest captured levels (64, 32, 16 at 512²)
MAX_DEPTH_LIMIT = 30  # heap indices of depth-30 nodes still fit in int32
LEVEL_WEIGHTS = (0.3, 0.5, 0.1, 0.1)  # 8², 16², 32², 64² at 512² (DiffSegmenter)
ScoreSize = Literal["image", "model"]
SCORE_SIZES: tuple[ScoreSize, ...] = ("image", "model")
CANDIDATE_SPAN = 0.99  # the released code's candidate range: 0.99·min y … 0.99·max y
AUTO_TAU = "auto"  # DiffCut's tau that runs AutoSC (diffcut/autosc.py) instead of the recursive cut
AutoSCVectors = Literal["last", "chosen"]
AUTOSC_VECTORS: tuple[AutoSCVectors, ...] = ("last", "chosen")
CUT_ONLY = ("alpha", "split_candidates", "max_depth", "drop_zero_rows")  # DiffCutConfig fields AutoSC does not read


def check_pamr(config: object) -> None:
    """A config's PAMR settings: ``pamr_dilations`` made a tuple of ints; ``ConfigError`` unless
    ``pamr_iterations`` ≥ 0 and every dilation ≥ 1."""
    object.__setattr__(config, "pamr_dilations", tuple(int(d) for d in config.pamr_dilations))
    if config.pamr_iterations < 0:
        raise ConfigError("pamr_iterations", f"must be ≥ 0 (0 = off); got {config.pamr_iterations}")
    if not config.pamr_dilations or min(config.pamr_dilations) < 1:
        raise ConfigError("pamr_dilations", f"must be integers ≥ 1; got {config.pamr_dilations}")


def levels_as_tuples(config: object) -> None:
    """A config's ``resolutions`` and ``resolution_weights`` given as lists, made tuples (hashable)."""
    for name in ("resolutions", "resolution_weights"):
        value = getattr(config, name)
        if value is not None:
            object.__setattr__(config, name, tuple(value))


@dataclass(frozen=True)
class DiffSegConfig:
    """DiffSeg parameters.

    ``kl_threshold``: τ for every merge iteration, or one per iteration (1.1 for COCO-Stuff,
    0.9 for Cityscapes in the paper). ``anchor_spacing``: latent cells between anchors (4 → a
    16×16 grid on 64×64). ``refine``: k-means refinement with at most ``kmeans_iterations``
    Lloyd steps. ``resolutions``/``resolution_weights``: levels to aggregate (None = all
    four, weights ∝ size). ``upsample_factor``: proposal upsampling before the arg-max
    (8 = pixel resolution of SD's latent).
    """

    kl_threshold: float | tuple[float, ...] = 1.1
    iterations: int = 3
    anchor_spacing: int = 4
    refine: bool = False
    kmeans_iterations: int = 300
    resolutions: tuple[int, ...] | None = None
    resolution_weights: tuple[float, ...] | None = None
    upsample_factor: int = 8

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ConfigError("iterations", f"must be ≥ 1; got {self.iterations}")
        thresholds = given = self.kl_threshold
        if isinstance(thresholds, (int, float)):
            thresholds = (float(thresholds),) * self.iterations
        thresholds = tuple(float(t) for t in thresholds)
        if len(thresholds) != self.iterations:
            raise ConfigError("kl_threshold", f"needs 1 or {self.iterations} values; got {len(thresholds)}")
        if min(thresholds) <= 0:
            raise ConfigError("kl_threshold", f"must be > 0; got {given}")
        object.__setattr__(self, "kl_threshold", thresholds)
        for name in ("anchor_spacing", "kmeans_iterations", "upsample_factor"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be ≥ 1; got {getattr(self, name)}")
        levels_as_tuples(self)


@dataclass(frozen=True)
class NCutConfig:
    """Recursive-NCut parameters.

    ``graph``: ``random_walk`` (NCut on the directed Pᵏ), ``dot`` (A = Pᵏ·(Pᵏ)ᵀ), ``cosine``
    (cosine similarity of the rows of Pᵏ) or ``diffcut`` (min–max scaled cosine to the power
    ``alpha``). ``power``: k ≥ 1. ``stopping``: ``manc_ncut``, ``manc_mincut`` or ``threshold``
    (then ``threshold`` is the NCut cost below which a split is kept; 0.3–0.6 in the paper).
    ``min_segment_size``: fewest latent cells per segment. ``max_depth``: deepest split (≤ 30).
    ``split_candidates``: None tries every split position along the Fiedler vector, an int c
    tries c evenly spaced values (strictly inside its range; with ``candidate_span`` s, from s·min
    to s·max, as DiffCut's code with s = 0.99). ``resolutions``/``resolution_weights``: levels to aggregate
    (None: the three largest, weights ∝ size). ``upsampling``: ``cosine`` or ``nearest``;
    ``upsample_factor``: pixels per latent cell in the label map (8 for SD).
    ``eigen_tolerance``: residual at which the eigen-solvers stop. ``walk_iterations``: most power
    iterations per random-walk eigenvector (near-equal eigenvalues converge slowly, but the split
    needs only the dominant invariant subspace, reached in tens of iterations).
    ``eigensolver``: ``auto`` (dense up to 256 nodes of explicit weights or 128 of features, else Lanczos warm-started from the parent's next Ritz vector: ``spectral.fiedler``) or
    ``dense_laplacian`` (DiffCut's released solver, ``spectral.laplacian_fiedler_vector``).
    ``drop_zero_rows`` (``graph="diffcut"`` only): below the root, nodes whose row of W holds a
    zero are left out of every cut and follow the lower side, as DiffCut's released code does.
    """

    graph: GraphMode = "dot"
    power: int = 1
    stopping: Stopping = "manc_ncut"
    threshold: float | None = None
    alpha: float = 10.0
    min_segment_size: int = 16
    max_depth: int = 12
    split_candidates: int | None = None
    resolutions: tuple[int, ...] | None = None
    resolution_weights: tuple[float, ...] | None = None
    upsampling: Upsampling = "cosine"
    upsample_factor: int = 8
    eigen_tolerance: float = 1e-5
    walk_iterations: int = 200
    candidate_span: float | None = field(default=None, metadata=ADDED)
    eigensolver: EigenSolver = field(default="auto", metadata=ADDED)
    drop_zero_rows: bool = field(default=False, metadata=ADDED)

    def __post_init__(self) -> None:
        for name, value, choices in (
            ("graph", self.graph, GRAPHS),
            ("stopping", self.stopping, STOPPINGS),
            ("upsampling", self.upsampling, UPSAMPLINGS),
            ("eigensolver", self.eigensolver, EIGEN_SOLVERS),
        ):
            if value not in choices:
                raise ConfigError(name, f"must be one of {choices}; got {value!r}")
        if self.drop_zero_rows and self.graph != "diffcut":
            raise ConfigError("drop_zero_rows", "follows DiffCut's released code: graph='diffcut' only")
        if self.stopping == "threshold" and (self.threshold is None or self.threshold <= 0):
            raise ConfigError(
                "threshold",
                f"stopping='threshold' needs a threshold > 0 (the paper uses 0.3–0.6); got {self.threshold}",
            )
        if self.stopping != "threshold" and self.threshold is not None:
            raise ConfigError(
                "threshold", f"is only used with stopping='threshold'; stopping={self.stopping!r} sets its own"
            )
        if self.power < 1:
            raise ConfigError("power", f"must be ≥ 1; got {self.power}")
        if not 1 <= self.max_depth <= MAX_DEPTH_LIMIT:
            raise ConfigError("max_depth", f"must be in [1, {MAX_DEPTH_LIMIT}]; got {self.max_depth}")
        for name in ("min_segment_size", "upsample_factor", "walk_iterations"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be ≥ 1; got {getattr(self, name)}")
        for name in ("alpha", "eigen_tolerance"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, f"must be > 0; got {getattr(self, name)}")
        if self.candidate_span is not None and not 0 < self.candidate_span <= 1:
            raise ConfigError("candidate_span", f"must be in (0, 1] or None; got {self.candidate_span}")
        if self.split_candidates is not None and self.split_candidates < 1:
            raise ConfigError("split_candidates", f"must be ≥ 1 or None (every position); got {self.split_candidates}")
        levels_as_tuples(self)


@dataclass(frozen=True)
class OpenVocabConfig:
    """Open-vocabulary labelling.

    ``level_weights``: cross-attention fusion weights, coarsest level first (normalised to sum 1).
    ``refine``: multiply by the self-attention (step 3). ``background_threshold``: the constant
    score of the background channel, in [0, 1]; not tuned (random weights only here): choose it on
    a split you may tune on. ``ignore_margin``: None, or the smallest lead of the best channel over
    the runner-up below which a pixel is uncertain. ``score_size``: where the maps are min–max
    normalised and labelled (step 4): ``image`` (the image's own size, as released) or ``model``
    (the model input's pixels, cheaper for large photos). ``upsample_factor``: latent cell → pixels
    (``model``, or ``image`` without a known image size).
    ``pamr_iterations`` (0 = off) and ``pamr_dilations``: image-aware refinement of the pixel score
    maps before labelling (``dsseg.methods.pamr.pamr``). ``crf_iterations`` (0 = off): then a dense
    CRF on the background + class channels, normalised to probabilities (``dsseg.methods.dense_crf``;
    the optional ``crf`` extra); labels and the ignore margin are read from its marginals.
    """

    level_weights: tuple[float, ...] = LEVEL_WEIGHTS
    refine: bool = True
    background_threshold: float = 0.5
    ignore_margin: float | None = None
    upsample_factor: int = 8
    pamr_iterations: int = 0
    pamr_dilations: tuple[int, ...] = (1, 2, 4, 8)
    crf_iterations: int = field(default=0, metadata=ADDED)
    score_size: ScoreSize = "image"

    def __post_init__(self) -> None:
        weights = tuple(float(w) for w in self.level_weights)
        if not weights or min(weights) < 0 or sum(weights) <= 0:
            raise ConfigError("level_weights", f"must be non-negative with a positive sum; got {weights}")
        object.__setattr__(self, "level_weights", weights)
        if not 0.0 <= self.background_threshold <= 1.0:
            raise ConfigError("background_threshold", f"is a score in [0, 1]; got {self.background_threshold}")
        if self.ignore_margin is not None and not 0.0 < self.ignore_margin <= 1.0:
            raise ConfigError("ignore_margin", f"must be in (0, 1] or None; got {self.ignore_margin}")
        if self.upsample_factor < 1:
            raise ConfigError("upsample_factor", f"must be ≥ 1; got {self.upsample_factor}")
        if self.score_size not in SCORE_SIZES:
            raise ConfigError("score_size", f"must be one of {SCORE_SIZES}; got {self.score_size!r}")
        check_pamr(self)
        if self.crf_iterations < 0:
            raise ConfigError("crf_iterations", f"must be ≥ 0; got {self.crf_iterations}")
        if self.crf_iterations and not crf_available():
            raise ConfigError("crf_iterations", CRF_INSTALL)


@dataclass(frozen=True)
class DiffCutConfig:
    """DiffCut parameters. ``tau``: the NCut cost below which a split is kept (0.5 for SSD-1B, 0.2
    for SD 1.4 in the paper), or ``"auto"``: AutoSC instead of the recursive cut (the released
    ``diffcut/autosc.py``: the number of segments from the eigengaps over α ∈ {1, 5, 10, 15}, the
    segments by ``cluster_qr``; see ``dsseg.methods.diffcut``). ``alpha``: the affinity exponent.
    ``split_candidates``: split values tried per cut. ``max_depth``: deepest split (the released
    code has no limit; ours stops at 30). ``assign_factor``: cells of the assignment grid per feature
    cell along each side (4: the latent grid). ``pamr_iterations`` (0 = off) and ``pamr_dilations``:
    step 4. ``upsample_factor``: pixels per assignment cell in the label map (8: the model input's
    pixels). ``drop_zero_rows``: below the root, leave the nodes with a zero in their row of W out of
    the cuts, as released (see the module docstring). ``autosc_vectors`` (``tau="auto"`` only):
    ``last``, as released, clusters the eigenvectors of the last α tried (15), whichever α chose the
    number of segments; ``chosen`` those of the α that chose it. ``alpha``, ``split_candidates``,
    ``max_depth`` and ``drop_zero_rows`` belong to the recursive cut: with ``tau="auto"`` they must
    keep their defaults."""

    tau: float | str = field(default=0.5, metadata=OWN_TYPE_CHECK)  # "auto": a message of its own
    alpha: float = 10.0
    split_candidates: int = 100
    max_depth: int = 30
    assign_factor: int = 4
    pamr_iterations: int = 0
    pamr_dilations: tuple[int, ...] = (1, 2, 4, 8)
    upsample_factor: int = 8
    drop_zero_rows: bool = True
    autosc_vectors: AutoSCVectors = field(default="last", metadata=ADDED)

    def __post_init__(self) -> None:
        if not self.autosc:
            if isinstance(self.tau, bool) or not isinstance(self.tau, Real):
                raise ConfigError("tau", f"must be a number > 0 or {AUTO_TAU!r} (AutoSC); got {self.tau!r}")
            if self.tau <= 0:
                raise ConfigError("tau", f"must be > 0; got {self.tau}")
        if self.alpha <= 0:
            raise ConfigError("alpha", f"must be > 0; got {self.alpha}")
        for name in ("split_candidates", "assign_factor", "upsample_factor"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be ≥ 1; got {getattr(self, name)}")
        if not 1 <= self.max_depth <= MAX_DEPTH_LIMIT:
            raise ConfigError("max_depth", f"must be in [1, {MAX_DEPTH_LIMIT}]; got {self.max_depth}")
        if self.autosc_vectors not in AUTOSC_VECTORS:
            raise ConfigError("autosc_vectors", f"must be one of {AUTOSC_VECTORS}; got {self.autosc_vectors!r}")
        if self.autosc:
            for f in fields(self):
                if f.name in CUT_ONLY and getattr(self, f.name) != f.default:
                    raise ConfigError(
                        f.name, f"belongs to the recursive cut, which tau={AUTO_TAU!r} (AutoSC) does not run; "
                        f"leave it at {f.default!r}",
                    )  # fmt: skip
        elif self.autosc_vectors != "last":
            raise ConfigError("autosc_vectors", f"is read by AutoSC only: set tau={AUTO_TAU!r}")
        check_pamr(self)

    @property
    def autosc(self) -> bool:
        """Whether ``tau`` is ``"auto"``: AutoSC instead of the recursive cut."""
        return self.tau == AUTO_TAU

    def cut_config(self) -> NCutConfig:
        """The recursive-NCut settings that run DiffCut's cut (not with ``tau="auto"``)."""
        if self.autosc:
            raise ValueError(f"tau={AUTO_TAU!r} runs AutoSC, not the recursive cut")
        return NCutConfig(
            graph="diffcut", stopping="threshold", threshold=self.tau, alpha=self.alpha, min_segment_size=1,
            max_depth=self.max_depth, split_candidates=self.split_candidates, candidate_span=CANDIDATE_SPAN,
            eigensolver="dense_laplacian", drop_zero_rows=self.drop_zero_rows,
        )  # fmt: skip


@dataclass(frozen=True)
class Seg4DiffConfig:
    """Seg4Diff parameters (cvlab-kaist/Seg4Diff, ``seg4diff_model_unsup.py``, commit c81a2c62; the
    released code is followed where it and its config disagree). ``kl_threshold``: the symmetric KL
    below which a proposal joins an anchor's group (the released code hard-codes 0.1; its config's
    KL_THRESHOLD 0.035 is printed but not read). ``max_masks``: keep at most this many merged maps,
    the first in token order (the config's MAX_MASK 32, which the released code never applies: None).
    ``text_tokens``: the image→text columns read as proposals (77: the CLIP part of the 154; the T5
    part is zeros without T5 and is not read). ``minmax_tokens``: each position's proposal values
    min-max normalised over the tokens first, as the released ``att2mask`` (the definition that wins).
    ``upsample_factor``: pixels per token in the label map when the image's own size is not known
    (cached attention; 16: 8-pixel latent cells, patch 2); images are labelled at their own size."""

    kl_threshold: float = 0.1
    max_masks: int | None = None
    text_tokens: int = 77
    minmax_tokens: bool = True
    upsample_factor: int = 16

    def __post_init__(self) -> None:
        if not self.kl_threshold > 0:
            raise ConfigError("kl_threshold", f"must be > 0; got {self.kl_threshold}")
        if self.max_masks is not None and self.max_masks < 1:
            raise ConfigError("max_masks", f"must be ≥ 1 or None (no cap); got {self.max_masks}")
        for name in ("text_tokens", "upsample_factor"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be ≥ 1; got {getattr(self, name)}")
