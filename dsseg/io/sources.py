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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class InputPlan:
    """What a job reads, decided on the driver without reading the images' rows.

    ``listed``: items held on the driver (ITEM_SCHEMA): the images and tar members of a listing
    (one entry per file: bounded by the files a folder holds), or after ``held_items`` the
    sharded and limited items a run plans. ``manifests``: the manifest files
    (one file, or every file of a folder or glob of manifests), read as a stream of chunks
    (``manifest_chunks``) by Ray tasks, never as one list.
    """

    spec: str
    listed: pa.Table | None = None
    manifests: tuple[str, ...] = ()


def plan_inputs(spec: str) -> InputPlan:
    """Decide how ``spec`` is read (see the module docstring); listing errors are ``ConfigError``s."""
    expanded = _expand(spec)
    if isinstance(expanded, InputPlan):
        return expanded
    items = expanded
    if not items:
        raise ConfigError(
            "input", f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) or .tar shards found in {spec!r}"
        )
    check_unique(spec, [item["image_id"] for item in items])
    return InputPlan(spec, listed=pa.Table.from_pylist(items, schema=ITEM_SCHEMA))


def check_unique(spec: str, image_ids: Sequence[str]) -> None:
    """Refuse repeated ids (each image has one row per config)."""
    repeated = [image_id for image_id, count in Counter(image_ids).items() if count > 1]
    if repeated:
        raise ConfigError(
            "input", f"{spec!r} has {len(repeated)} repeated image_id(s), e.g. {repeated[:3]}; ids must be unique"
        )


def list_inputs(spec: str, limit: int | None = None, shard: tuple[int, int] | None = None) -> list[Item]:
    """The images of ``spec`` (see the module docstring) in a deterministic order, as one list:
    for tools and tests on small inputs (the segment job streams manifests instead).

    ``shard=(i, n)`` keeps the images whose id hashes (CRC-32) to i mod n — stable when the
    collection grows; ``limit`` then keeps the first N. Raises ``ConfigError`` with what to do
    when nothing is found, the input is missing, or ids repeat.
    """
    return held_items(plan_inputs(spec), limit, shard).to_pylist()


def held_items(inputs: InputPlan, limit: int | None, shard: tuple[int, int] | None) -> pa.Table:
    """The items of ``inputs`` in ``shard`` (all without one), the first ``limit`` of them (all
    without one), held on the driver: a listing's, or a manifest's read chunk by chunk (its ids
    checked for repeats here; a listing's were checked when listed)."""
    if inputs.listed is not None:
        items = inputs.listed
        if shard is not None:
            items = items.filter(shard_mask(items.column("image_id"), shard))
        return items.slice(0, limit) if limit else items
    items = first_items(inputs.manifests, limit, shard)
    check_unique(inputs.spec, items.column("image_id").to_pylist())
    return items


def first_items(manifests: Sequence[str], limit: int | None, shard: tuple[int, int] | None) -> pa.Table:
    """The first ``limit`` items (all without a limit) of ``manifests`` in file order that fall
    in ``shard``, read chunk by chunk (memory holds the result and one chunk)."""
    kept: list[pa.Table] = []
    count = 0
    for source in manifests:
        for chunk in manifest_chunks(source):
            for table in read_manifest_chunk(chunk):
                if shard is not None:
                    table = table.filter(shard_mask(table.column("image_id"), shard))
                if limit:
                    table = table.slice(0, limit - count)
                kept.append(table)
                count += len(table)
                if limit and count >= limit:
                    return pa.concat_tables(kept)
    return pa.concat_tables(kept) if kept else ITEM_SCHEMA.empty_table()


def shard_mask(image_ids: pa.ChunkedArray | pa.Array, shard: tuple[int, int]) -> pa.Array:
    """Which ``image_ids`` belong to ``shard`` (see ``in_shard``), as a boolean array."""
    return pa.array([in_shard(image_id, shard) for image_id in image_ids.to_pylist()], pa.bool_())


def in_shard(image_id: str, shard: tuple[int, int]) -> bool:
    """Whether ``image_id`` belongs to shard ``(i, n)``: CRC-32 of the id ≡ i (mod n)."""
    return zlib.crc32(image_id.encode()) % shard[1] == shard[0]


def _expand(spec: str) -> list[Item] | InputPlan:
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
        return InputPlan(spec, manifests=(spec,))
    if suffix == TAR_EXTENSION:
        return list_tar(spec)
    if suffix in IMAGE_EXTENSIONS:
        return [_item(posixpath.basename(path), uri_of(spec, path))]
    raise ConfigError(
        "input",
        f"{spec!r}: cannot tell what {suffix or 'this file'} is; give an image, a folder, a glob, "
        f"a manifest ({', '.join(sorted(MANIFEST_EXTENSIONS))}) or a {TAR_EXTENSION} shard",
    )


def _from_glob(spec: str) -> list[Item] | InputPlan:
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


def _from_files(spec: str, root: str, files: list[str]) -> list[Item] | InputPlan:
    """Images under ``root`` by relative path (sorted), then the members of its tar shards; or,
    when the files are manifests only, those manifests (sorted) as one input."""
    images = sorted((posixpath.relpath(f, root), f) for f in files if extension(f) in IMAGE_EXTENSIONS)
    shards = sorted(f for f in files if extension(f) == TAR_EXTENSION)
    manifests = sorted(f for f in files if extension(f) in MANIFEST_EXTENSIONS)
    if manifests and not images and not shards:
        return InputPlan(spec, manifests=tuple(uri_of(spec, path) for path in manifests))
    if manifests:
        raise ConfigError(
            "input",
            f"{spec!r} holds both images (or .tar shards) and manifests ({posixpath.basename(manifests[0])}); "
            "give a folder or glob of one kind, e.g. a glob like DIR/*.parquet for the manifests",
        )
    items = [_item(relative, uri_of(spec, path)) for relative, path in images]
    for shard in shards:
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


# Rows per chunk a manifest is read in: a bounded slice of memory in a Ray task or the driver.
MANIFEST_CHUNK_ROWS = 65_536


@dataclass(frozen=True)
class ManifestChunk:
    """A piece of a manifest one task reads: a Parquet row group, or a whole JSON-lines file."""

    source: str
    row_group: int | None = None


def manifest_chunks(source: str) -> list[ManifestChunk]:
    """The pieces of ``source`` (one per Parquet row group; one for a JSON-lines file), after
    checking its columns; ``ConfigError`` says what is missing."""
    if extension(source) != ".parquet":
        check_manifest_columns(source, manifest_columns(source))
        return [ManifestChunk(source)]
    fs, path = resolve(source)
    with fs.open_input_file(path) as handle:
        parquet = pq.ParquetFile(handle)  # one footer read: the columns and the row groups
        check_manifest_columns(source, parquet.schema_arrow)
        return [ManifestChunk(source, group) for group in range(parquet.metadata.num_row_groups)]


def manifest_columns(source: str) -> pa.Schema:
    """The schema of a manifest (a Parquet footer, or the first block of a JSON-lines file)."""
    fs, path = resolve(source)
    with fs.open_input_file(path) as handle:
        if extension(path) == ".parquet":
            return pq.read_schema(handle)
        reader = pajson.open_json(handle)
        return reader.schema


def check_manifest_columns(source: str, schema: pa.Schema) -> None:
    missing = {"image_id", "uri"} - set(schema.names)
    if missing:
        raise ConfigError(
            "input",
            f"manifest {source!r} lacks column(s) {sorted(missing)}; it needs image_id and uri (found {schema.names})",
        )


def read_manifest_chunk(chunk: ManifestChunk) -> Iterator[pa.Table]:
    """The items (ITEM_SCHEMA) of one manifest chunk, in file order, ``MANIFEST_CHUNK_ROWS`` at a time."""
    fs, path = resolve(chunk.source)
    base = parent(chunk.source)
    with fs.open_input_file(path) as handle:
        if chunk.row_group is None:
            reader = pajson.open_json(handle)
            schema = reader.schema
            batches: Iterator[pa.RecordBatch] = iter(reader)
        else:
            parquet = pq.ParquetFile(handle)
            schema = parquet.schema_arrow
            names = [name for name in ("image_id", "uri", class_column(schema)) if name]
            batches = parquet.iter_batches(MANIFEST_CHUNK_ROWS, row_groups=[chunk.row_group], columns=names)
        check_manifest_columns(chunk.source, schema)
        column = class_column(schema)
        for batch in batches:
            yield manifest_items(batch, base, column)


def class_column(schema: pa.Schema) -> str | None:
    """The manifest column of class names: ``classes``, else ``labels`` when it holds strings."""
    return next(
        (name for name in CLASS_COLUMNS if name in schema.names and _holds_names(schema.field(name).type)), None
    )


def manifest_items(batch: pa.RecordBatch | pa.Table, base: str, column: str | None) -> pa.Table:
    """Manifest rows → ITEM_SCHEMA rows: ids as strings, URIs resolved against ``base`` (a row
    without one keeps an empty source, which the decode stage reports as that image's error)."""
    ids = [str(value) for value in batch.column("image_id").to_pylist()]
    sources = ["" if uri is None else join(base, str(uri)) for uri in batch.column("uri").to_pylist()]
    classes = [parse_classes(value) for value in batch.column(column).to_pylist()] if column else None
    rows = len(ids)
    return pa.table(
        {
            "image_id": pa.array(ids, pa.string()),
            "source": pa.array(sources, pa.string()),
            "offset": pa.nulls(rows, pa.int64()),
            "size": pa.nulls(rows, pa.int64()),
            "classes": pa.array(classes, pa.list_(pa.string())) if classes else pa.nulls(rows, pa.list_(pa.string())),
        },
        schema=ITEM_SCHEMA,
    )


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
