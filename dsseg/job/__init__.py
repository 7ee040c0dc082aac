"""The segment job on Ray: its settings (``SegmentJob``, run files, config ids), the Ray Data
graph and its stages (decode on CPU, the model actor, encode and write on CPU), memory probing
for ``--batch-size auto``."""
