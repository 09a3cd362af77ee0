"""Dotted field names of nested config dicts ({'a': {'b': 1}} -> {'a.b': 1}).

Below every module that compares or logs configs (checkpointing's saved-config differences, the
trainer's hyper-parameters, config_lib), so none of them imports another for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}: a config dict as dotted field names."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat
