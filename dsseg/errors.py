"""The errors users act on: a parameter with a value that cannot work, weights that are not there."""

from __future__ import annotations


class ConfigError(ValueError):
    """A parameter with a value that cannot work: ``param`` names it as the library does
    (``batch_size``), and the command line turns that into its flag (``--batch-size``)."""

    def __init__(self, param: str, reason: str) -> None:
        super().__init__(f"{param}: {reason}")
        self.param, self.reason = param, reason


class WeightsNotFoundError(RuntimeError):
    """Model weights (a backbone, a captioner, a CLIP filter) that are not where they were asked
    for; the message says how to get them."""
