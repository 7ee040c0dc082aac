"""Parameters as fields of frozen config dataclasses: which fields are parameters, how config ids
treat fields added later, and a type check that names the parameter.

Every config of ``dsseg`` (the extraction configs of ``dsseg.model.config``, the method configs of
``dsseg.methods``) is a frozen dataclass whose fields are its parameters. Field metadata says more:

- ``ADDED``: a parameter added after outputs were written; config ids leave it out while it holds
  its default, so the ids of those outputs still match (``added_at_default``);
- ``DERIVED``: set from other parameters, not a parameter itself (``param_names`` leaves it out);
- ``OWN_TYPE_CHECK``: the config's own ``__post_init__`` checks the value's kind with a better
  message than ``check_param_types`` could give (``classes`` given as one string).

No model code here: checks run in milliseconds, before any model loads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from dsseg.errors import ConfigError

ADDED = {"added": True}
DERIVED = {"derived": True}
OWN_TYPE_CHECK = {"own_type_check": True}


def added_at_default(config: Any) -> set[str]:
    """The fields of the dataclass ``config`` marked ``ADDED`` that hold their defaults."""
    return {
        f.name for f in dataclasses.fields(config) if f.metadata.get("added") and getattr(config, f.name) == f.default
    }


def param_names(config_class: type) -> tuple[str, ...]:
    """The parameters a config owns: its fields, less the ``DERIVED`` ones."""
    return tuple(f.name for f in dataclasses.fields(config_class) if not f.metadata.get("derived"))


def check_param_types(config_class: type, params: Mapping[str, Any]) -> None:
    """Raise a ``ConfigError`` naming the parameter when a value given for one of ``config_class``'s
    fields is not of the kind its default is (a number, true/false, a list), before the config's
    own checks would fail on it with a message that names neither. Fields marked ``OWN_TYPE_CHECK``
    are left to the config."""
    fields = {f.name: f for f in dataclasses.fields(config_class) if f.default is not dataclasses.MISSING}
    for name, value in params.items():
        if name not in fields or fields[name].metadata.get("own_type_check"):
            continue
        default = fields[name].default
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(name, f"expects true or false; got {value!r}")
        elif isinstance(default, (int, float)) and isinstance(value, (str, bool)):
            raise ConfigError(
                name,
                f"expects a number{' (or a list of numbers)' if name.endswith('threshold') else ''}; got {value!r}",
            )
        elif isinstance(default, tuple) and isinstance(value, str):
            raise ConfigError(name, f"expects a list, e.g. [64, 32, 16]; got {value!r}")


__all__ = ["ADDED", "DERIVED", "OWN_TYPE_CHECK", "added_at_default", "check_param_types", "param_names"]
