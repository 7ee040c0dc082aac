"""Benchmarks: dataset readers with typed ground truth, metrics under the papers' exact protocols,
scoring on Ray, presets (one published table row each), reports, and pseudo-label exports.
Importing it loads no model code."""
