"""Data in and out: input sources (folders, globs, URIs, manifests, tar shards), image decoding
and the model-input geometry, COCO RLE masks, overlays, the Parquet schema and the results
folder (atomic part files, resume, ``_SUCCESS``)."""
