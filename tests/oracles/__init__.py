"""Test oracles: straightforward transcriptions that dsseg's fast code is checked against.

- ``diffseg_reference``, ``ncut_reference``, ``diffcut_reference``: each method written loop by loop
  in float64 (the official algorithm, or the definition where no code was released). Besides the
  tests, ``dsseg benchmark --compare`` times dsseg against them; it loads them from this folder, so
  it runs from a source checkout only (``dsseg/benchmark/checkout.py``).
- ``official_diffseg``: google/diffseg's evaluation (confusion and Hungarian matching), line by line.
- ``attention``: self-attention recomputed from each layer's recorded input (the capture tests).

They live with the tests, outside the ``dsseg`` package: nothing here ships in the wheel.
"""
