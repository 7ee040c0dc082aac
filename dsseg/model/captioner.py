"""Image captions from BLIP: the names DiffSeg's demo gives segments, and DiffSegmenter's prompts.

``load_captioner(name)`` accepts
- a hub id (default ``Salesforce/blip-image-captioning-base``, the DiffSeg demo's) or a local
  folder in transformers layout (``config.json``, weights, preprocessor and tokenizer files);
- ``"tiny"``: BLIP's classes at small widths with seeded random weights and a small vocabulary of
  thing and stuff names (``dsseg.model.nouns``), so its random captions name things; for tests and
  smoke runs. ``"blip-base-random"``: BLIP-base's architecture with random weights, for timing.

A ``Captioner`` captions a batch (``caption``) or continues one prompt per (image, prompt) pair
(``complete``: DiffSegmenter's conditional captions, "a photograph of a horse" → "standing in a
field"). Decoding is greedy, at most ``max_new_tokens`` tokens.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dsseg.errors import WeightsNotFoundError
from dsseg.model.backbone import resolve_device, resolve_dtype
from dsseg.model.config import DEFAULT_CAPTIONER
from dsseg.model.hub import is_local, weights_problem
from dsseg.model.nouns import NOUNS

RANDOM_CAPTIONERS = ("tiny", "blip-base-random")
MAX_NEW_TOKENS = 20

_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")
_FILLER_WORDS = (
    "a", "an", "the", "of", "in", "on", "with", "and", "at", "near", "two", "three", "small", "large", "white",
    "black", "brown", "green", "red", "blue", "standing", "sitting", "lying", "running", "grazing", "walking",
    "photograph", "photo",
)  # fmt: skip
_ARCHITECTURES = {
    "tiny": dict(
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=64),
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
    ),
    "blip-base-random": dict(vision={}, text={}),  # transformers' BLIP defaults are BLIP-base
}


class CaptionerNotFoundError(WeightsNotFoundError):
    """BLIP weights could not be loaded; the message says how to provide them."""


class Captioner:
    """A BLIP captioning model and its processor on one device (frozen, eval mode)."""

    def __init__(self, name: str, model, processor, max_new_tokens: int = MAX_NEW_TOKENS) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be ≥ 1; got {max_new_tokens}")
        self.name, self.model, self.processor, self.max_new_tokens = name, model, processor, max_new_tokens

    @property
    def decoding(self) -> dict:
        """Greedy decoding of at most ``max_new_tokens``, whatever the checkpoint's generation config says."""
        return dict(max_new_tokens=self.max_new_tokens, num_beams=1, do_sample=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def pixels(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """(H, W, 3) uint8 images → (B, 3, S, S) BLIP input in the model's dtype, on its device."""
        values = self.processor.image_processor(images=list(images), return_tensors="pt").pixel_values
        return values.to(self.device, next(self.model.parameters()).dtype)

    @torch.no_grad()
    def caption(self, images: Sequence[np.ndarray]) -> list[str]:
        """One caption per image, lower case (BLIP's tokenizer), batched in one ``generate``."""
        if not len(images):
            return []
        output = self.model.generate(pixel_values=self.pixels(images), **self.decoding)
        return [text.strip() for text in self.processor.batch_decode(output, skip_special_tokens=True)]

    @torch.no_grad()
    def complete(self, images: Sequence[np.ndarray], pairs: Sequence[tuple[int, str]]) -> list[str]:
        """Per (image index, prompt) pair: the words BLIP adds after ``prompt`` when captioning
        that image, lower case, without the prompt. Prompts of one token length share a call."""
        if not pairs:
            return []
        pixels = self.pixels(images)
        tokenizer = self.processor.tokenizer
        ids = [tokenizer(prompt).input_ids for _, prompt in pairs]
        by_length: dict[int, list[int]] = {}
        for k, sequence in enumerate(ids):
            by_length.setdefault(len(sequence), []).append(k)
        out = [""] * len(pairs)
        for length, members in by_length.items():
            input_ids = torch.tensor([ids[k] for k in members], device=self.device)
            output = self.model.generate(
                pixel_values=pixels[[pairs[k][0] for k in members]],
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                **self.decoding,
            )
            # BLIP drops the prompt's closing [SEP]: new tokens start at length − 1.
            for k, text in zip(members, tokenizer.batch_decode(output[:, length - 1 :], skip_special_tokens=True)):
                out[k] = text.strip()
        return out


def load_captioner(
    name: str = DEFAULT_CAPTIONER,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    offline: bool = False,
    max_new_tokens: int = MAX_NEW_TOKENS,
    seed: int = 0,
) -> Captioner:
    """Load a captioner by name (see the module docstring) on ``device`` (default: CUDA when
    available); ``dtype`` default float16 on CUDA, float32 on CPU; ``offline`` never contacts the hub."""
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    if name in RANDOM_CAPTIONERS:
        model, processor = build_random_captioner(name, seed)
    else:
        model, processor = _load_pretrained(name, offline)
    torch.nn.Module.to(model, device=device, dtype=dtype).eval().requires_grad_(False)
    return Captioner(name, model, processor, max_new_tokens)


@functools.lru_cache(maxsize=2)
def cached_captioner(
    name: str, device: str | None = None, dtype: str | None = None, offline: bool = False
) -> Captioner:
    """``load_captioner`` memoised per (name, device, dtype, offline), for interactive use."""
    return load_captioner(name, device=device, dtype=dtype, offline=offline)


def check_captioner_available(name: str, offline: bool = False) -> None:
    """Fail fast, before any worker starts, when the captioner's weights certainly cannot be loaded."""
    if name in RANDOM_CAPTIONERS:
        return
    problem = weights_problem(name, "config.json", offline)
    if problem:
        raise CaptionerNotFoundError(_missing_weights_message(name, problem))


def build_random_captioner(name: str = "tiny", seed: int = 0):
    """(BlipForConditionalGeneration, BlipProcessor) with seeded random weights; the vocabulary:
    BERT's special tokens, a few function words and the single-word names of ``dsseg.model.nouns``."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessorPil,
        BlipProcessor,
    )

    arch = _ARCHITECTURES[name]
    words = sorted({word for noun in NOUNS for word in noun.split()} | set(_FILLER_WORDS))
    vocabulary = [*_SPECIAL_TOKENS, *words]
    if name == "blip-base-random":  # BLIP-base's vocabulary size: same embedding and softmax cost
        vocabulary += [f"[unused{i}]" for i in range(30524 - len(vocabulary))]
    index = {token: i for i, token in enumerate(vocabulary)}
    with tempfile.TemporaryDirectory() as folder:
        vocab_file = Path(folder) / "vocab.txt"
        vocab_file.write_text("\n".join(vocabulary) + "\n")
        tokenizer = BertTokenizer(str(vocab_file), do_lower_case=True, model_max_length=512)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    text = dict(
        vocab_size=len(vocabulary),
        pad_token_id=index["[PAD]"],
        bos_token_id=index["[DEC]"],
        eos_token_id=index["[SEP]"],
        sep_token_id=index["[SEP]"],
        **arch["text"],
    )
    config = BlipConfig(text_config=text, vision_config=arch["vision"])
    size = config.vision_config.image_size
    image_processor = BlipImageProcessorPil(size={"height": size, "width": size})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BlipForConditionalGeneration(config)
    return model, BlipProcessor(image_processor, tokenizer)


def _load_pretrained(source: str, offline: bool):
    from transformers import AutoTokenizer, BlipForConditionalGeneration, BlipImageProcessorPil, BlipProcessor

    check_captioner_available(source, offline)
    source = str(Path(source).expanduser()) if is_local(source) else source
    try:
        model = BlipForConditionalGeneration.from_pretrained(source, local_files_only=offline)
        # The PIL image processor: the same resize and normalisation without requiring torchvision.
        processor = BlipProcessor(
            BlipImageProcessorPil.from_pretrained(source, local_files_only=offline),
            AutoTokenizer.from_pretrained(source, local_files_only=offline),
        )
    except (OSError, ValueError) as error:  # hub errors and missing files are OSError subclasses
        raise CaptionerNotFoundError(_missing_weights_message(source, f"{type(error).__name__}: {error}")) from error
    return model, processor


def _missing_weights_message(source: str, reason: str) -> str:
    return (
        f"Could not load a BLIP captioning model from {source!r} ({reason.splitlines()[0]}).\n"
        "dsseg needs a transformers BLIP captioning model (config.json, weights, preprocessor_config.json, "
        "tokenizer files). To provide one:\n"
        f"  1. on a machine with internet access: huggingface-cli download {DEFAULT_CAPTIONER} "
        "--local-dir /models/blip-base,\n"
        "     then pass --captioner /models/blip-base (a local folder), or\n"
        "  2. keep a hub id and point HF_HOME at a cache that holds it; add --offline on machines without internet.\n"
        "For a smoke test without weights use --captioner tiny (random weights, random captions)."
    )
