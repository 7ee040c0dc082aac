"""The real CLIP BPE tokenizer, built offline from the vocabulary file that open_clip ships.

Stable Diffusion v1 uses OpenAI's CLIP tokenizer (49,408 tokens). Its merges list is
published as ``bpe_simple_vocab_16e6.txt.gz`` inside the ``open_clip_torch`` wheel; the
token table is derived from it (256 byte symbols, the same with the ``</w>`` end-of-word
suffix, one token per merge, then the two special tokens). Only the data file is read: the
``open_clip`` package is located with ``importlib`` and never imported, so it can be
installed with ``pip install --no-deps open_clip_torch``.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
from pathlib import Path

from transformers import CLIPTokenizer

VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_ENV = "DSSEG_CLIP_VOCAB"
CONTEXT_LENGTH = 77
_NUM_MERGES = 49152 - 256 - 2


class TokenizerVocabMissing(FileNotFoundError):
    """The CLIP BPE vocabulary file could not be found."""


def find_vocab_file() -> Path:
    """Path of ``bpe_simple_vocab_16e6.txt.gz``: ``$DSSEG_CLIP_VOCAB`` or the installed open_clip."""
    override = os.environ.get(VOCAB_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise TokenizerVocabMissing(f"{VOCAB_ENV}={override!r} is not a file")
        return path
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = Path(folder) / VOCAB_FILENAME
            if path.is_file():
                return path
    raise TokenizerVocabMissing(
        "The CLIP tokenizer vocabulary was not found. Install it with "
        "`pip install --no-deps open_clip_torch` (only its data file is used), or set "
        f"{VOCAB_ENV} to a copy of {VOCAB_FILENAME}."
    )


def _byte_symbols() -> list[str]:
    """The 256 byte stand-ins of byte-level BPE, in CLIP's vocabulary order.

    Printable bytes stand for themselves and come first; the other bytes are mapped, in
    byte order, to the characters from U+0100 on.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    remapped = 256 - len(printable)
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(remapped)]


@functools.lru_cache(maxsize=1)
def clip_tokenizer() -> CLIPTokenizer:
    """The OpenAI CLIP tokenizer (as in SD v1's ``tokenizer/`` folder), padded to 77 tokens."""
    lines = gzip.open(find_vocab_file()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
    base = _byte_symbols()
    tokens = base + [s + "</w>" for s in base] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    tokenizer.model_max_length = CONTEXT_LENGTH
    return tokenizer
