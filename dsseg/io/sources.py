"""What a job reads: turn ``--input`` into a deterministic list of images, and read their bytes.

An input is one of
- an image file, a folder (searched recursively) or a glob (``data/**/*.jpg``; ``*`` also
  crosses folders), local or any URI pyarrow's file systems open (``s3://``, ``gs://``,
  ``hdfs://``, ``file://``);
- a manifest: a ``.parquet`` or ``.jsonl`` file with columns ``image_id`` and ``uri``, and
  optionally ``classes`` (or ``labels``, when it holds strings): the image's candidate class
  names, a list of strings or one comma-separated string (an empty list: no classes), for the open-vocabulary method and segment naming (other
  columns, e.g. ground truth, are ignored here; relative URIs are resolved against the
  manifest's folder);
- uncompressed tar shards in WebDataset layout (``key.jpg`` beside ``key.json``), given as a
  ``.tar`` file, a glob, or found in a folder. Each image member is read in place by its byte
  range; non-image members are skipped.

Every item is ``{"image_id", "source", "offset", "size", "classes"}``: ``offset``/``size`` locate
a tar member's bytes inside ``source`` (None for whole files); ``classes`` is None unless a
manifest gives them. ``image_id`` is the path relative to
the folder or glob root, the manifest's ``image_id``, or the member's path inside its tar, so a
folder, its manifest and its tar shards give the same ids. Ids must be unique.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import posixpath
import tarfile
import zlib
from collections import Counter
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.json as pajson
import pyarrow.parquet as pq

from dsseg.errors import ConfigError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
MANIFEST_EXTENSIONS = frozenset({".parquet", ".jsonl"})
TAR_EXTENSION = ".tar"
GLOB_CHARS = frozenset("*?[")
ITEM_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("source", pa.string()),
        ("offset", pa.int64()),
        ("size", pa.int64()),
        ("classes", pa.list_(pa.string())),
    ]
)
CLASS_COLUMNS = ("classes", "labels")

Item = dict[str, Any]


def is_uri(path: str) -> bool:
    """True for ``scheme://...`` (a Windows drive letter is not a scheme)."""
    scheme = urlparse(path).scheme
    return len(scheme) > 1 and "://" in path


@functools.lru_cache(maxsize=16)
def _filesystem(root: str) -> pafs.FileSystem:
    return pafs.FileSystem.from_uri(root)[0]


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """(file system, path inside it) for a local path or a URI; file systems are cached per bucket."""
    if not is_uri(path):
        return pafs.LocalFileSystem(), os.path.abspath(path)
    # Split by hand: urlparse would cut object keys at "#" or "?" (legal in bucket keys and globs).
    scheme, rest = path.split("://", 1)
    if scheme.lower() == "file":
        return pafs.LocalFileSystem(), rest
    bucket = rest.split("/", 1)[0]
    return _filesystem(f"{scheme}://{bucket}"), rest.rstrip("/")


def join(base: str, relative: str) -> str:
    """``relative`` under ``base`` (a local path or URI); absolute paths and URIs are kept."""
    if is_uri(relative) or os.path.isabs(relative):
        return relative
    if is_uri(base):
        return base.rstrip("/") + "/" + relative
    return os.path.abspath(os.path.join(base, relative))


def parent(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[0] if is_uri(path) else os.path.dirname(os.path.abspath(path))


def uri_of(path: str, inside: str) -> str:
    """The URI (or local path) of ``inside``, a path of ``path``'s file system."""
    if not is_uri(path) or urlparse(path).scheme == "file":
        return inside
    return f"{urlparse(path).scheme}://{inside}"


def read_bytes(source: str, offset: int | None = None, size: int | None = None) -> bytes:
    """The bytes of ``source``, or ``size`` bytes from ``offset`` (a tar member)."""
    fs, path = resolve(source)
    if offset is None:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    with fs.open_input_file(path) as handle:
        handle.seek(offset)
        return handle.read(size)


def extension(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


def list_inputs(spec: str, limit: int | None = None, shard: tuple[int, int] | None = None) -> list[Item]:
    """The images of ``spec`` (see the module docstring) in a deterministic order.

    ``shard=(i, n)`` keeps the images whose id hashes (CRC-32) to i mod n — stable when the
    collection grows; ``limit`` then keeps the first N. Raises ``ValueError`` with what to do
    when nothing is found, the input is missing, or ids repeat.
    """
    items = _expand(spec)
    if not items:
        raise ConfigError(
            "input", f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) or .tar shards found in {spec!r}"
        )
    repeated = [image_id for image_id, count in Counter(item["image_id"] for item in items).items() if count > 1]
    if repeated:
        raise ConfigError(
            "input", f"{spec!r} has {len(repeated)} repeated image_id(s), e.g. {repeated[:3]}; ids must be unique"
        )
    if shard is not None:
        items = [item for item in items if in_shard(item["image_id"], shard)]
    return items[:limit] if limit else items


def in_shard(image_id: str, shard: tuple[int, int]) -> bool:
    """Whether ``image_id`` belongs to shard ``(i, n)``: CRC-32 of the id ≡ i (mod n)."""
    return zlib.crc32(image_id.encode()) % shard[1] == shard[0]


def _expand(spec: str) -> list[Item]:
    if any(char in GLOB_CHARS for char in spec):
        return _from_glob(spec)
    fs, path = resolve(spec)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise ConfigError(
            "input", f"{spec!r} does not exist; give an image file, a folder, a glob, a manifest or a .tar shard"
        )
    if info.type == pafs.FileType.Directory:
        files = [
            f.path for f in fs.get_file_info(pafs.FileSelector(path, recursive=True)) if f.type == pafs.FileType.File
        ]
        return _from_files(spec, path, files)
    suffix = extension(path)
    if suffix in MANIFEST_EXTENSIONS:
        return read_manifest(spec)
    if suffix == TAR_EXTENSION:
        return list_tar(spec)
    if suffix in IMAGE_EXTENSIONS:
        return [_item(posixpath.basename(path), uri_of(spec, path))]
    raise ConfigError(
        "input",
        f"{spec!r}: cannot tell what {suffix or 'this file'} is; give an image, a folder, a glob, "
        f"a manifest ({', '.join(sorted(MANIFEST_EXTENSIONS))}) or a {TAR_EXTENSION} shard",
    )


def _from_glob(spec: str) -> list[Item]:
    fs, pattern = resolve(spec)
    parts = pattern.split("/")
    fixed = next(i for i, part in enumerate(parts) if any(char in GLOB_CHARS for char in part))
    root = "/".join(parts[:fixed]) or "/"
    relative_pattern = "/".join(parts[fixed:])
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise ConfigError("input", f"{spec!r}: the folder {root!r} before the wildcard does not exist")
    files = [
        f.path
        for f in fs.get_file_info(pafs.FileSelector(root, recursive=True))
        if f.type == pafs.FileType.File and fnmatch.fnmatchcase(posixpath.relpath(f.path, root), relative_pattern)
    ]
    return _from_files(spec, root, files)


def _from_files(spec: str, root: str, files: list[str]) -> list[Item]:
    """Images under ``root`` by relative path (sorted), then the members of its tar shards."""
    images = sorted((posixpath.relpath(f, root), f) for f in files if extension(f) in IMAGE_EXTENSIONS)
    items = [_item(relative, uri_of(spec, path)) for relative, path in images]
    for shard in sorted(f for f in files if extension(f) == TAR_EXTENSION):
        items.extend(list_tar(uri_of(spec, shard)))
    return items


def list_tar(source: str) -> list[Item]:
    """The image members of an uncompressed tar, in archive order, with their byte ranges."""
    fs, path = resolve(source)
    try:
        with fs.open_input_file(path) as handle, tarfile.open(fileobj=handle, mode="r:") as archive:
            members = [m for m in archive.getmembers() if m.isfile() and extension(m.name) in IMAGE_EXTENSIONS]
    except tarfile.ReadError as error:
        raise ValueError(
            f"{source!r} is not an uncompressed tar ({error}); compressed shards cannot be read by byte range, repack them with `tar -cf`"
        ) from None
    return [_item(posixpath.normpath(m.name).lstrip("/"), source, m.offset_data, m.size) for m in members]


def read_manifest(source: str) -> list[Item]:
    """Items of a Parquet or JSON-lines manifest with ``image_id`` and ``uri`` columns, in file order."""
    fs, path = resolve(source)
    with fs.open_input_file(path) as handle:
        table = pq.read_table(handle) if extension(path) == ".parquet" else pajson.read_json(handle)
    missing = {"image_id", "uri"} - set(table.column_names)
    if missing:
        raise ValueError(
            f"manifest {source!r} lacks column(s) {sorted(missing)}; it needs image_id and uri (found {table.column_names})"
        )
    base = parent(source)
    ids = [str(value) for value in table.column("image_id").to_pylist()]
    uris = table.column("uri").to_pylist()
    if any(uri is None for uri in uris):
        raise ValueError(f"manifest {source!r} has rows without a uri")
    column = next(
        (name for name in CLASS_COLUMNS if name in table.column_names and _holds_names(table.schema.field(name).type)),
        None,
    )
    classes = [parse_classes(value) for value in table.column(column).to_pylist()] if column else [None] * len(ids)
    return [_item(image_id, join(base, str(uri)), classes=names) for image_id, uri, names in zip(ids, uris, classes)]


def _holds_names(kind: pa.DataType) -> bool:
    """A column of class names: strings, or lists of strings (e.g. not integer class labels)."""
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def parse_classes(value: Any) -> list[str] | None:
    """A manifest's class cell → names: a list of strings, or one string of comma-separated names;
    blanks and repeats are dropped."""
    if value is None:
        return None
    names = (str(name).strip() for name in (value.split(",") if isinstance(value, str) else value))
    return list(dict.fromkeys(name for name in names if name))  # repeats dropped, order kept


def _item(
    image_id: str, source: str, offset: int | None = None, size: int | None = None, classes: list[str] | None = None
) -> Item:
    return {"image_id": image_id, "source": source, "offset": offset, "size": size, "classes": classes}
