"""What one ``dsseg export`` does: the output to read, the format, the folder to write."""

from __future__ import annotations

from dataclasses import dataclass

from dsseg.errors import ConfigError

FORMATS = ("hf", "labelstudio", "cvat", "fiftyone", "coco", "voc")


@dataclass(frozen=True)
class ExportSettings:
    """``output``: a segment-job output (folder or URI) or a pseudo-label output's ``run-*`` folder;
    ``format``: one of ``FORMATS``; ``to``: a new local folder (replaced whole with ``overwrite``);
    ``config_id``: the config to export (needed when the output holds several); ``images``: where
    the images are — ``ROOT/<image_id>`` (a folder, URI or, for ``labelstudio``, a URL prefix;
    default: each row's ``source``); ``limit``: export at most this many rows; ``copy_images``:
    copy the images into ``voc``/``cvat`` exports; ``shard_rows``: rows per ``hf`` Parquet shard."""

    output: str
    format: str
    to: str
    config_id: str | None = None
    images: str | None = None
    limit: int | None = None
    overwrite: bool = False
    copy_images: bool = True
    shard_rows: int = 100_000

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError("format", f"must be one of {', '.join(FORMATS)}; got {self.format!r}")
        if not self.to or "://" in self.to:
            raise ConfigError("to", f"must be a local folder; got {self.to!r}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError("limit", f"must be ≥ 1; got {self.limit}")
        if self.shard_rows < 1:
            raise ConfigError("shard_rows", f"must be ≥ 1; got {self.shard_rows}")
