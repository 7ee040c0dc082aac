"""The settings of a segment run: which images, which method configs, which resources.

A run holds one or more method configs (``dsseg.spec.MethodSpec``). Each image is encoded and
run through the UNet once per distinct extraction (``dsseg.segmenter.forward_groups``), and every
config segments that attention, so sweeping DiffSeg's threshold costs one forward per image.
Errors name the parameters (``batch_size``); the command line turns them into flags.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dsseg import checks
from dsseg.checks import (
    check_captioner,
    check_captioner_used,
    check_classes_given,
    check_family,
    needs_image_classes,
    shared_preparation,
)
from dsseg.errors import ConfigError
from dsseg.io.images import DEFAULT_MAX_PIXELS
from dsseg.io.sources import is_uri
from dsseg.model.config import DEFAULT_BACKBONE, RUNTIME_FIELDS, Preparation
from dsseg.model.families import backbone_family
from dsseg.model.filter_specs import (
    check_candidates_file,
    check_filter_spec,
    filter_may_read_captions,
    filter_reads_captions,
    filter_supplies_classes,
)
from dsseg.model.hub import is_local
from dsseg.model.precision import auto_dtype
from dsseg.params import added_at_default
from dsseg.spec import MethodSpec

MASK_FRAMES = (
    "original",
    "model",
)  # where masks are drawn: the original image, or the model input (benchmark protocols)
AUTO_BATCH = "auto"  # batch size chosen by each model actor from its free memory (dsseg.job.memory)
AUTO_BATCH_ROWS = 64  # rows Ray hands an actor per call under "auto"; the actor splits them to its size


def id_params(params: Any) -> dict[str, Any]:
    """A method config's parameters as its config id hashes them: every field, less those added
    after outputs were written that hold their defaults (``added_at_default``)."""
    unset = added_at_default(params)
    return {name: value for name, value in dataclasses.asdict(params).items() if name not in unset}


def config_id(
    backbone: str,
    dtype: str,
    spec: MethodSpec,
    class_filter: str | None = None,
    rendering: Mapping[str, Any] | None = None,
    captioner: str | None = None,
) -> str:
    """Hash of what determines a config's output: backbone, dtype, extraction and method config
    (and the class filter, for configs prompted with classes). ``rendering``: the job's decode and
    mask settings that differ from their defaults (``SegmentJob.rendering``); the defaults add
    nothing, so ids of outputs written before these settings existed still match. ``captioner``:
    part of the id of configs that read captions (``reads_captions``)."""
    resolved = spec.resolved
    extract_fields = {k: v for k, v in resolved.flat_extraction().items() if k not in RUNTIME_FIELDS}
    if filtered(spec, class_filter):
        extract_fields["class_filter"] = class_filter
    if captioner and reads_captions(spec, class_filter, may=True):
        extract_fields["captioner"] = captioner
    key = {
        "backbone": backbone,
        "dtype": dtype,
        "extract": extract_fields,
        "method": spec.method,
        "params": id_params(resolved.params),
    }
    if rendering:
        key["rendering"] = dict(rendering)
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def filtered(spec: MethodSpec, class_filter: str | None) -> bool:
    """Whether ``class_filter`` narrows the config's classes (it prompts with classes not named by captions)."""
    prompting = spec.resolved.extraction.prompting
    return bool(class_filter) and prompting.uses_classes and not prompting.caption_names


def reads_captions(spec: MethodSpec, class_filter: str | None = None, may: bool = False) -> bool:
    """Whether the config reads captions (``dsseg.checks.reads_captions``) under the class filter
    ``class_filter`` (``may``: or may read them, through a factory's filter that reads them when it
    sets ``needs_captions``)."""
    reading = filter_may_read_captions if may else filter_reads_captions
    return checks.reads_captions(spec.resolved, reading(class_filter))


def parse_shard(text: str | Sequence[int] | None) -> tuple[int, int] | None:
    """``"2/8"`` → (2, 8): the third of eight disjoint shards."""
    if text is None:
        return None
    try:
        index, count = (int(part) for part in (text.split("/") if isinstance(text, str) else text))
    except ValueError:
        raise ConfigError("shard", f"expects I/N, e.g. 0/4; got {text!r}") from None
    if not 0 <= index < count:
        raise ConfigError("shard", f"I/N needs 0 ≤ I < N; got {index}/{count}")
    return index, count


def temporary_working_dir(environ: Mapping[str, str] | None = None) -> str | None:
    """The current directory when it is a temporary copy of a ``ray job submit --working-dir``
    (the job supervisor's ``RAY_JOB_CONFIG_JSON_ENV_VAR`` names a working_dir), else None."""
    environ = os.environ if environ is None else environ
    try:
        runtime_env = json.loads(environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}").get("runtime_env") or {}
    except (ValueError, AttributeError):
        return None
    return os.getcwd() if runtime_env.get("working_dir") else None


@dataclass(frozen=True)
class SegmentJob:
    """Everything a segment run needs; a value, validated at construction without touching the file
    system (``ConfigError`` names the setting); ``check_paths`` checks the paths where the job runs.

    ``input``: see ``dsseg.io.sources``. ``configs``: the method configs (dicts are read as
    ``MethodSpec.from_mapping``). ``gpus_per_worker``: None → 1 when the cluster has GPUs and
    ``device`` allows, else 0; fractions share a GPU between workers. ``max_image_side``:
    images are decoded at most this large (masks are still written at the original size);
    ``max_pixels``: the decompression-bomb limit on the header's width × height.
    ``overwrite``: delete earlier results first (with ``shard``: that shard's only). ``append``: write
    into an output that holds other files or another input's results (refused otherwise), recording
    every input in ``config.json``.
    ``retry_errors``: also redo images whose error rows have a transient reason (read_failed,
    out_of_memory, model_failed, encode_failed); the new row replaces the error row.
    ``compile``: ``torch.compile`` parts of the model in each actor (``dsseg.model.backbone.compile_backbone``).
    ``rows_per_file``: rows per write batch; each config's share of a batch is its own part file.
    ``flush_seconds``: a write batch also closes when its first row has waited this long, so rows
    land (and survive an interrupt) within about this time however slow the model is.
    ``exif_transpose``: turn photos upright by their EXIF orientation (False: keep the stored pixel
    order, as benchmark labels are drawn). ``mask_frame``: ``original`` draws masks at the image's
    original size; ``model`` keeps them in the model-input frame (e.g. the 512² centre crop), the
    frame the DiffSeg protocol scores in (each RLE's ``size`` is then the model input's).
    ``class_filter``: ``clip:MODEL``, ``caption``, ``caption+clip:MODEL`` or ``module:factory`` (see
    ``dsseg.model.class_filters``), narrowing each image's candidate classes in the model actors.
    ``captioner``: ``tiny`` or a BLIP hub id or folder (``dsseg.model.captioner``), loaded once per
    model actor, for configs that read captions (``naming=caption``, ``descriptors=caption``, a
    caption class filter); required by them, refused without them.
    """

    input: str
    output: str
    configs: tuple[MethodSpec, ...] = field(default_factory=lambda: (MethodSpec(),))
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
    append: bool = False
    retry_errors: bool = False
    max_image_side: int | None = 4096
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    rows_per_file: int = 256
    flush_seconds: float = 60.0
    exif_transpose: bool = True
    mask_frame: str = "original"
    class_filter: str | None = None
    captioner: str | None = None

    def __post_init__(self) -> None:
        if self.batch_size != AUTO_BATCH and not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ConfigError(
                "batch_size",
                f"must be an integer ≥ 1 or {AUTO_BATCH!r} (chosen from free memory); got {self.batch_size!r}",
            )
        for name in ("num_workers", "rows_per_file"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be ≥ 1; got {getattr(self, name)}")
        if not self.flush_seconds > 0:
            raise ConfigError("flush_seconds", f"must be > 0 (seconds); got {self.flush_seconds}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError("limit", f"must be ≥ 1; got {self.limit}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError("device", f"must be auto, cpu or cuda; got {self.device!r}")
        if self.mask_frame not in MASK_FRAMES:
            raise ConfigError("mask_frame", f"must be one of {MASK_FRAMES}; got {self.mask_frame!r}")
        if self.gpus_per_worker is not None and not 0 <= self.gpus_per_worker <= 8:
            raise ConfigError("gpus_per_worker", f"must be in [0, 8]; got {self.gpus_per_worker}")
        for name in ("max_image_side", "max_pixels"):
            if getattr(self, name) is not None and getattr(self, name) < 64:
                raise ConfigError(name, f"must be ≥ 64 (or unset for no limit); got {getattr(self, name)}")
        specs = tuple(spec if isinstance(spec, MethodSpec) else MethodSpec.from_mapping(spec) for spec in self.configs)
        if not specs:
            raise ConfigError("configs", "a run needs at least one method config")
        object.__setattr__(self, "configs", specs)
        object.__setattr__(self, "shard", parse_shard(self.shard))
        if self.dtype == "auto" and self.device != "auto":
            # Pin what "auto" means, so the config ids name the precision the rows were made in (a CPU
            # job: as this machine's CPU resolves it, see dsseg.model.precision).
            dtype, _ = auto_dtype(self.device, [spec.method for spec in specs])
            object.__setattr__(self, "dtype", dtype)
        ids = self.config_ids()
        if len(set(ids)) != len(ids):
            raise ConfigError("configs", "two of the run's configs are the same; remove the repeat")
        if self.class_filter is not None:
            check_filter_spec(self.class_filter)
        configs = [spec.resolved for spec in specs]
        check_captioner(
            configs, captioner=bool(self.captioner), filter_reads_captions=filter_reads_captions(self.class_filter)
        )
        check_captioner_used(
            configs,
            captioner=bool(self.captioner),
            filter_may_read_captions=filter_may_read_captions(self.class_filter),
        )
        shared_preparation(configs)

    def check_paths(self) -> None:
        """What the settings alone cannot tell, checked where the job will run (before any model
        loads): the input and a candidates file exist, every config can run on
        the backbone's family (read from its name or folder: ``dsseg.checks.check_family``), and under
        ``ray job submit`` the output is not relative to the temporary copy of the working dir.
        ``ConfigError`` otherwise."""
        if not is_uri(self.input) and not any(c in self.input for c in "*?[") and not Path(self.input).exists():
            raise ConfigError(
                "input",
                f"{self.input!r} does not exist; give an image file, a folder, a glob, a manifest or a .tar shard",
            )
        missing_folder = is_local(self.backbone) and not Path(self.backbone).expanduser().is_dir()
        if not missing_folder:  # a missing folder is reported with how to get weights (check_backbone_available)
            check_family([spec.resolved for spec in self.configs], backbone_family(self.backbone))
        copy = temporary_working_dir()
        if copy and not is_uri(self.output) and not Path(self.output).is_absolute():
            raise ConfigError(
                "output",
                f"{self.output!r} is relative, and this job runs in the temporary copy of its --working-dir that "
                f"`ray job submit` made ({copy}), which Ray deletes: give an absolute path on storage every node "
                "shares, or a URI (s3://…, gs://…)",
            )
        if self.class_filter is not None:
            check_candidates_file(self.class_filter)

    @property
    def rendering(self) -> dict[str, Any]:
        """The decode and mask settings that differ from their defaults (part of the config ids)."""
        settings = {"exif_transpose": self.exif_transpose, "mask_frame": self.mask_frame}
        return {
            name: value for name, value in settings.items() if value != SegmentJob.__dataclass_fields__[name].default
        }

    def config_ids(self) -> list[str]:
        return [
            config_id(self.backbone, self.dtype, spec, self.class_filter, self.rendering, self.captioner)
            for spec in self.configs
        ]

    @property
    def clip_models(self) -> list[str]:
        """The CLIP models of the configs named by CLIP (``naming="clip"``), each once, in config order."""
        return list(dict.fromkeys(spec.resolved.clip.clip_model for spec in self.configs if spec.resolved.clip))

    @property
    def rows_per_model_call(self) -> int:
        """Rows Ray hands a model actor at once: the batch size, or ``AUTO_BATCH_ROWS`` under "auto"."""
        return AUTO_BATCH_ROWS if self.batch_size == AUTO_BATCH else int(self.batch_size)

    @property
    def preparation(self) -> Preparation:
        """The model input every config takes, which the decode stage prepares (one per image)."""
        return self.configs[0].resolved.extraction.preparation

    @property
    def needs_item_classes(self) -> bool:
        """Whether some config labels pixels by class (openvocab) without default classes, so
        each image needs a class list of its own (unless the class filter gives them)."""
        # With candidates:FILE the file gives each image its classes (an image it lacks becomes an error row).
        supplied = filter_supplies_classes(self.class_filter)
        return any(needs_image_classes(spec.resolved, filter_supplies_classes=supplied) for spec in self.configs)

    def check_classes(self, items: Sequence[Mapping[str, Any]]) -> None:
        """Raise a ``ConfigError`` when a config labels pixels by class (openvocab) without default
        classes and some image has no class list of its own (or an empty one)."""
        lacking = sum(not item.get("classes") for item in items)  # no list, or an empty one
        check_classes_given(
            [spec.resolved for spec in self.configs],
            f"{lacking} image(s) with no (or an empty) class list have" if lacking else None,
            filter_supplies_classes=filter_supplies_classes(self.class_filter),
        )

    def check_manifest_classes(self, manifests: Sequence[str]) -> None:
        """The streamed form of ``check_classes``: the manifests must have a class column (a row
        with an empty list becomes that image's error row, ``no_classes:``)."""
        from dsseg.io.sources import class_column, manifest_columns

        if not self.needs_item_classes:
            return
        lacking = [source for source in manifests if class_column(manifest_columns(source)) is None]
        check_classes_given(
            [spec.resolved for spec in self.configs],
            f"the images of manifest {lacking[0]!r} (it has no classes column) have" if lacking else None,
            filter_supplies_classes=filter_supplies_classes(self.class_filter),
        )

    def record(self) -> dict[str, Any]:
        """A JSON-ready description of the run (for config.json)."""
        record = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "configs"}
        record["configs"] = [
            {
                "config_id": cid,
                "method": spec.method,
                "params": spec.params,
                "extract_config": spec.resolved.flat_extraction(),
                "method_config": dataclasses.asdict(spec.resolved.params),
            }
            for cid, spec in zip(self.config_ids(), self.configs)
        ]
        return record


RUN_FILE_KEYS = frozenset(f.name for f in fields(SegmentJob))


def load_run_file(path: str) -> dict[str, Any]:
    """A YAML (or JSON) run file → SegmentJob keyword arguments; unknown keys are an error.

    ``configs`` is a list of ``{method: NAME, PARAM: VALUE, ...}`` entries.
    """
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise ConfigError("config", f"{path!r} cannot be read: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError("config", f"{path!r} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError("config", f"{path!r} must hold a mapping of run settings; got {type(data).__name__}")
    unknown = sorted(set(data) - RUN_FILE_KEYS)
    if unknown:
        raise ConfigError("config", f"{path!r}: unknown key(s) {unknown}; valid: {sorted(RUN_FILE_KEYS)}")
    if "configs" in data:
        if not isinstance(data["configs"], list) or not all(isinstance(entry, dict) for entry in data["configs"]):
            raise ConfigError(
                "config", f"{path!r}: configs must be a list of mappings like {{method: diffseg, kl_threshold: 0.9}}"
            )
        data["configs"] = tuple(MethodSpec.from_mapping(entry) for entry in data["configs"])
    return data
