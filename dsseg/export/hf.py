"""``hf``: a Hugging Face ``datasets`` dataset as Parquet shards, written with pyarrow alone.

```
data/train-00000-of-0000N.parquet   image_id, image, label, [segment_ids, names, scores]
README.md                           the dataset card: its data files and features
id2label.json                       named outputs: {"<class id>": "<name>"} (255: ignore)
```

``image`` and ``label`` are ``datasets``' Image feature: a struct ``{bytes, path}`` holding the
encoded file. ``label`` is a PNG of the row's segment ids (class-agnostic outputs; 16-bit past
255) or class ids (named outputs; 255 ignore). ``names``/``scores``: each segment's class name
and score, in ``segment_ids`` order, where the output has them. Each shard's schema carries the
``huggingface`` metadata that tells ``datasets`` the features, so ``datasets.load_dataset(DIR)``
gives Image columns. Row groups of ``ROW_GROUP_ROWS`` rows keep memory small for readers too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dsseg.export.rows import ClassNames, ImageReader, Kind, Row
from dsseg.io.masks import png_bytes

ROW_GROUP_ROWS = 128
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
IMAGE_FEATURE = {"_type": "Image"}


def value_feature(dtype: str) -> dict[str, str]:
    return {"dtype": dtype, "_type": "Value"}


def list_feature(dtype: str) -> dict[str, Any]:
    # "Sequence" of a value: read as a list by every datasets version (4.x and later call it List)
    return {"feature": value_feature(dtype), "_type": "Sequence"}


def schema_for(kind: Kind) -> pa.Schema:
    """The shards' schema, with the ``huggingface`` metadata naming each column's feature."""
    fields = [("image_id", pa.string(), value_feature("string")), ("image", IMAGE_TYPE, IMAGE_FEATURE)]
    fields.append(("label", IMAGE_TYPE, IMAGE_FEATURE))
    if kind.named or kind.scored:
        fields.append(("segment_ids", pa.list_(pa.int32()), list_feature("int32")))
    if kind.named:
        fields.append(("names", pa.list_(pa.string()), list_feature("string")))
    if kind.scored:
        fields.append(("scores", pa.list_(pa.float32()), list_feature("float32")))
    features = {name: feature for name, _, feature in fields}
    metadata = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    return pa.schema([(name, kind_) for name, kind_, _ in fields], metadata=metadata)


class HfWriter:
    def __init__(
        self, folder: Path, kind: Kind, classes: ClassNames | None, images: ImageReader, shard_rows: int
    ) -> None:
        self.folder, self.kind, self.classes, self.images = folder, kind, classes, images
        self.schema = schema_for(kind)
        self.shard_rows = shard_rows
        (folder / "data").mkdir()
        self.shards: list[Path] = []
        self.writer: pq.ParquetWriter | None = None
        self.rows_in_shard = 0
        self.buffer: list[dict[str, Any]] = []
        self.count = 0

    def write(self, row: Row) -> None:
        data, extension = self.images.read(row.row, row.size)
        labels = row.class_ids if self.classes is not None else row.segment_ids
        name = row.image_id.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        record: dict[str, Any] = {
            "image_id": row.image_id,
            "image": {"bytes": data, "path": f"{name}{extension}"},
            "label": {"bytes": png_bytes(labels), "path": f"{name}.png"},
        }
        if self.kind.named or self.kind.scored:
            record["segment_ids"] = [s["segment_id"] for s in row.segments]
        if self.kind.named:
            record["names"] = [s.get("label") for s in row.segments]
        if self.kind.scored:
            record["scores"] = [s.get("score") for s in row.segments]
        self.buffer.append(record)
        self.count += 1
        if len(self.buffer) >= ROW_GROUP_ROWS:
            self.flush()

    def flush(self) -> None:
        while self.buffer:
            if self.writer is None:
                path = self.folder / "data" / f".shard-{len(self.shards)}.parquet"
                self.shards.append(path)
                self.writer = pq.ParquetWriter(path, self.schema)
                self.rows_in_shard = 0
            room = self.shard_rows - self.rows_in_shard
            batch, self.buffer = self.buffer[:room], self.buffer[room:]
            self.writer.write_table(pa.Table.from_pylist(batch, schema=self.schema), row_group_size=ROW_GROUP_ROWS)
            self.rows_in_shard += len(batch)
            if self.rows_in_shard >= self.shard_rows:
                self.writer.close()
                self.writer = None

    def finish(self) -> dict[str, Any]:
        self.flush()
        if self.writer is not None:
            self.writer.close()
        if not self.shards:  # no rows: one empty shard keeps the dataset loadable
            pq.write_table(self.schema.empty_table(), self.folder / "data" / ".shard-0.parquet")
            self.shards.append(self.folder / "data" / ".shard-0.parquet")
        total = len(self.shards)
        for index, path in enumerate(self.shards):
            path.rename(path.with_name(f"train-{index:05d}-of-{total:05d}.parquet"))
        if self.classes is not None:
            id2label = {str(k): v for k, v in self.classes.id2label().items()}
            (self.folder / "id2label.json").write_text(json.dumps(id2label, indent=1) + "\n")
        (self.folder / "README.md").write_text(self.card())
        return {"rows": self.count, "shards": total}

    def card(self) -> str:
        """The dataset card: YAML front matter naming the data files and features, then a line on what it is."""
        features = json.loads(self.schema.metadata[b"huggingface"])["info"]["features"]
        lines = ["---", "configs:", "- config_name: default", "  data_files:", "  - split: train"]
        lines += ["    path: data/train-*", "dataset_info:", "  features:"]
        for name, feature in features.items():
            if feature["_type"] == "Image":
                lines += [f"  - name: {name}", "    dtype: image"]
            elif feature["_type"] == "Sequence":
                lines += [f"  - name: {name}", "    sequence: " + feature["feature"]["dtype"]]
            else:
                lines += [f"  - name: {name}", f"    dtype: {feature['dtype']}"]
        what = "class ids (id2label.json)" if self.classes is not None else "segment ids"
        lines += ["---", "", "Pseudo-labels exported by `dsseg export`: `label` holds each image's " + what + ".", ""]
        return "\n".join(lines)
