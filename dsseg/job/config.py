"""The configuration of a segment run: which images, which method configs, which resources.

A run holds one or more method configs (``MethodSpec``). Each image is encoded and run
through the UNet once per distinct extraction setting, and every config segments that
attention, so sweeping DiffSeg's threshold costs one forward per image.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from dsseg.api import split_params
from dsseg.model.backbone import DEFAULT_BACKBONE
from dsseg.model.extract import RUNTIME_FIELDS, ExtractConfig
from dsseg.io.images import DEFAULT_MAX_PIXELS
from dsseg.io.sources import is_uri

MASK_FRAMES = ("original", "model")  # where masks are drawn: the original image, or the model input (benchmark protocols)
AUTO_BATCH = "auto"  # batch size chosen by each model actor from its free memory (dsseg.job.memory)
AUTO_BATCH_ROWS = 64  # rows Ray hands an actor per call under "auto"; the actor splits them to its size

# Extraction fields that shape the model input; the decode stage prepares one input per image,
# so a run's configs must agree on them.
PREPARE_FIELDS = ("image_size", "geometry", "antialias")


@dataclass(frozen=True)
class MethodSpec:
    """One method config of a run: a method name and its method/extraction parameters."""

    method: str = "diffseg"
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", dict(self.params))
        self.configs()  # validates the method name and parameters

    def configs(self) -> tuple[ExtractConfig, Any]:
        return split_params(self.method, self.params)

    @classmethod
    def from_mapping(cls, entry: Mapping[str, Any]) -> MethodSpec:
        """``{"method": "diffseg", "kl_threshold": 0.9, ...}`` (a run file's ``configs`` entry)."""
        entry = dict(entry)
        method = entry.pop("method", "diffseg")
        return cls(method, {k: tuple(v) if isinstance(v, list) else v for k, v in entry.items()})


def config_id(backbone: str, dtype: str, spec: MethodSpec, class_filter: str | None = None, rendering: Mapping[str, Any] | None = None) -> str:
    """Hash of what determines a config's output: backbone, dtype, extraction and method config
    (and the class filter, for configs prompted with classes). ``rendering``: the job's decode and
    mask settings that differ from their defaults (``SegmentJob.rendering``); the defaults add
    nothing, so ids of outputs written before these settings existed still match."""
    extract, method_config = spec.configs()
    extract_fields = {k: v for k, v in dataclasses.asdict(extract).items() if k not in RUNTIME_FIELDS}
    if extract.uses_classes and class_filter:
        extract_fields["class_filter"] = class_filter
    key = {
        "backbone": backbone,
        "dtype": dtype,
        "extract": extract_fields,
        "method": spec.method,
        "params": dataclasses.asdict(method_config),
    }
    if rendering:
        key["rendering"] = dict(rendering)
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def parse_shard(text: str | Sequence[int] | None) -> tuple[int, int] | None:
    """``"2/8"`` → (2, 8): the third of eight disjoint shards."""
    if text is None:
        return None
    try:
        index, count = (int(part) for part in (text.split("/") if isinstance(text, str) else text))
    except ValueError:
        raise ValueError(f"--shard expects I/N, e.g. 0/4; got {text!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard I/N needs 0 ≤ I < N; got {index}/{count}")
    return index, count


@dataclass(frozen=True)
class SegmentJob:
    """Everything a segment run needs; validated at construction.

    ``input``: see ``dsseg.io.sources``. ``configs``: the method configs (dicts are read as
    ``MethodSpec.from_mapping``). ``gpus_per_worker``: None → 1 when the cluster has GPUs and
    ``device`` allows, else 0; fractions share a GPU between workers. ``max_image_side``:
    images are decoded at most this large (masks are still written at the original size);
    ``max_pixels``: the decompression-bomb limit on the header's width × height.
    ``overwrite``: delete earlier results first (with ``shard``: that shard's only).
    ``retry_errors``: also redo images whose error rows have a transient reason (read_failed,
    out_of_memory, model_failed, encode_failed); the new row replaces the error row.
    ``compile``: ``torch.compile`` parts of the model in each actor (``dsseg.model.backbone.compile_backbone``).
    ``rows_per_file``: rows per write batch; each config's share of a batch is its own part file.
    ``exif_transpose``: turn photos upright by their EXIF orientation (False: keep the stored pixel
    order, as benchmark labels are drawn). ``mask_frame``: ``original`` draws masks at the image's
    original size; ``model`` keeps them in the model-input frame (e.g. the 512² centre crop), the
    frame the DiffSeg protocol scores in (each RLE's ``size`` is then the model input's). ``class_filter``: ``clip:MODEL`` or
    ``module:factory`` (see ``dsseg.model.class_filters``), narrowing each image's candidate classes in
    the model actors. ``crash_once_marker``: fault injection for
    tests — the first model call exits its process (as an OOM kill would) unless the marker
    file exists, which it then creates.
    """

    input: str
    output: str
    configs: tuple[MethodSpec, ...] = (MethodSpec(),)
    backbone: str = DEFAULT_BACKBONE
    device: str = "auto"
    dtype: str = "auto"
    offline: bool = False
    compile: bool = False
    batch_size: int | str = 4
    num_workers: int = 1
    gpus_per_worker: float | None = None
    limit: int | None = None
    shard: tuple[int, int] | None = None
    overwrite: bool = False
    retry_errors: bool = False
    max_image_side: int | None = 4096
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    rows_per_file: int = 256
    exif_transpose: bool = True
    mask_frame: str = "original"
    class_filter: str | None = None
    crash_once_marker: str | None = None

    def __post_init__(self) -> None:
        if not is_uri(self.input) and not any(c in self.input for c in "*?[") and not Path(self.input).exists():
            raise ValueError(f"--input {self.input!r} does not exist; give an image file, a folder, a glob, a manifest or a .tar shard")
        if self.batch_size != AUTO_BATCH and not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ValueError(f"--batch-size must be an integer ≥ 1 or {AUTO_BATCH!r} (chosen from free memory); got {self.batch_size!r}")
        if self.num_workers < 1 or self.rows_per_file < 1:
            raise ValueError(f"worker count and rows per file must be ≥ 1; got {self.num_workers}, {self.rows_per_file}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be ≥ 1; got {self.limit}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"--device must be auto, cpu or cuda; got {self.device!r}")
        if self.dtype == "auto" and self.device != "auto":
            # Pin what "auto" means, so the config ids name the precision the rows were made in.
            object.__setattr__(self, "dtype", "float32" if self.device == "cpu" else "float16")
        if self.mask_frame not in MASK_FRAMES:
            raise ValueError(f"--mask-frame must be one of {MASK_FRAMES}; got {self.mask_frame!r}")
        if self.gpus_per_worker is not None and not 0 <= self.gpus_per_worker <= 8:
            raise ValueError(f"gpus per worker must be in [0, 8]; got {self.gpus_per_worker}")
        for name in ("max_image_side", "max_pixels"):
            if getattr(self, name) is not None and getattr(self, name) < 64:
                raise ValueError(f"--{name.replace('_', '-')} must be ≥ 64 (or unset for no limit); got {getattr(self, name)}")
        specs = tuple(spec if isinstance(spec, MethodSpec) else MethodSpec.from_mapping(spec) for spec in self.configs)
        if not specs:
            raise ValueError("a run needs at least one method config")
        object.__setattr__(self, "configs", specs)
        object.__setattr__(self, "shard", parse_shard(self.shard))
        ids = self.config_ids()
        if len(set(ids)) != len(ids):
            raise ValueError("two of the run's configs are the same; remove the repeat")
        prepared = {tuple(getattr(spec.configs()[0], name) for name in PREPARE_FIELDS) for spec in specs}
        if self.class_filter is not None and ":" not in self.class_filter:
            raise ValueError(f"--class-filter expects clip:MODEL or package.module:factory; got {self.class_filter!r}")
        if len(prepared) > 1:
            raise ValueError(f"all configs of a run must share {', '.join(PREPARE_FIELDS)}; run configs that differ in them as separate jobs")

    @property
    def rendering(self) -> dict[str, Any]:
        """The decode and mask settings that differ from their defaults (part of the config ids)."""
        settings = {"exif_transpose": self.exif_transpose, "mask_frame": self.mask_frame}
        return {name: value for name, value in settings.items() if value != SegmentJob.__dataclass_fields__[name].default}

    def config_ids(self) -> list[str]:
        return [config_id(self.backbone, self.dtype, spec, self.class_filter, self.rendering) for spec in self.configs]

    @property
    def rows_per_model_call(self) -> int:
        """Rows Ray hands a model actor at once: the batch size, or ``AUTO_BATCH_ROWS`` under "auto"."""
        return AUTO_BATCH_ROWS if self.batch_size == AUTO_BATCH else int(self.batch_size)

    def prepare_config(self) -> ExtractConfig:
        """The extraction config whose geometry the decode stage applies (shared by all configs)."""
        return self.configs[0].configs()[0]

    def extraction_groups(self) -> list[tuple[ExtractConfig, list[int]]]:
        """Configs that can share one forward: (extraction covering them all, their indices).

        Configs group when their extraction differs only in what is captured; the shared
        extraction captures the union of their levels and cross-attention if any needs it.
        """
        groups: dict[ExtractConfig, list[int]] = {}
        for index, spec in enumerate(self.configs):
            extract = spec.configs()[0]
            groups.setdefault(replace(extract, capture_resolutions=None, cross_attention=False, class_batch_size=1), []).append(index)
        merged = []
        for key, indices in groups.items():
            extracts = [self.configs[i].configs()[0] for i in indices]
            levels = [e.capture_resolutions for e in extracts]
            union = None if any(level is None for level in levels) else tuple(sorted({r for level in levels for r in level}))
            shared = replace(
                key,
                capture_resolutions=union,
                cross_attention=any(e.cross_attention for e in extracts),
                class_batch_size=min(e.class_batch_size for e in extracts),
            )
            merged.append((shared, indices))
        return merged

    def check_classes(self, items: Sequence[Mapping[str, Any]]) -> None:
        """Raise a ``ValueError`` when a config labels pixels by class (openvocab) without default
        classes and some image has no class list of its own (or an empty one)."""
        for spec in self.configs:
            extract = spec.configs()[0]
            if extract.class_template is not None and not extract.classes:
                lacking = sum(not item.get("classes") for item in items)  # no list, or an empty one
                if lacking:
                    raise ValueError(
                        f"{lacking} image(s) have no (or an empty) class list and the {spec.method} config gives none: add a classes "
                        "column to the manifest, or --classes / --vocabulary (classes:/vocabulary: in a run file)"
                    )

    def record(self) -> dict[str, Any]:
        """A JSON-ready description of the run (for config.json)."""
        record = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("configs", "crash_once_marker")}
        record["configs"] = [
            {
                "config_id": cid,
                "method": spec.method,
                "params": spec.params,
                "extract_config": dataclasses.asdict(spec.configs()[0]),
                "method_config": dataclasses.asdict(spec.configs()[1]),
            }
            for cid, spec in zip(self.config_ids(), self.configs)
        ]
        return record


RUN_FILE_KEYS = frozenset(f.name for f in fields(SegmentJob)) - {"crash_once_marker"}


def load_run_file(path: str) -> dict[str, Any]:
    """A YAML (or JSON) run file → SegmentJob keyword arguments; unknown keys are an error.

    ``configs`` is a list of ``{method: NAME, PARAM: VALUE, ...}`` entries.
    """
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise ValueError(f"--config {path!r} cannot be read: {error}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"--config {path!r} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path!r} must hold a mapping of run settings; got {type(data).__name__}")
    unknown = sorted(set(data) - RUN_FILE_KEYS)
    if unknown:
        raise ValueError(f"--config {path!r}: unknown key(s) {unknown}; valid: {sorted(RUN_FILE_KEYS)}")
    if "configs" in data:
        if not isinstance(data["configs"], list) or not all(isinstance(entry, dict) for entry in data["configs"]):
            raise ValueError(f"--config {path!r}: configs must be a list of mappings like {{method: diffseg, kl_threshold: 0.9}}")
        data["configs"] = tuple(MethodSpec.from_mapping(entry) for entry in data["configs"])
    return data
