"""Where pretrained weights come from: a local folder or a Hugging Face hub id, checked fast.

``weights_problem`` answers, before any worker starts and without downloading, why weights
certainly cannot be loaded: a folder without the file a model needs, a hub id absent from the
cache when offline, or a hub that one short request cannot reach (a machine without the hub
fails in seconds here instead of in minutes of download retries).
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import try_to_load_from_cache

HUB_CHECK_SECONDS = 10.0


def is_local(source: str) -> bool:
    """Whether ``source`` names a local folder (a path that exists, or starts like one)."""
    return source.startswith((".", "/", "~")) or Path(source).expanduser().exists()


def weights_problem(source: str, marker: str, offline: bool = False) -> str | None:
    """Why ``source`` (folder or hub id) cannot give the file ``marker`` (e.g. ``unet/config.json``),
    or None when it may."""
    if is_local(source):
        if not Path(source).expanduser().is_dir():
            return f"{source}: no such folder"
        if not (Path(source).expanduser() / marker).is_file():
            return f"{source} has no {marker}"
        return None
    if isinstance(try_to_load_from_cache(source, marker), str):
        return None
    if offline:
        return "not in the Hugging Face cache and offline is set"
    reason = hub_unreachable(source)
    return f"not in the Hugging Face cache, and {reason}" if reason else None


def hub_unreachable(name: str) -> str | None:
    """Why the hub cannot give ``name`` (one request, ``HUB_CHECK_SECONDS`` at most), or None when it can."""
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(name, timeout=HUB_CHECK_SECONDS)
    except Exception as error:  # no network, DNS, timeout, 401/404: all end the same way for the user
        return f"the hub cannot be reached or refuses {name!r} ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
    return None
