"""Code versions for cache keys: a hash of the source of the functions that make a cached value.

A hand-bumped VERSION is forgotten exactly when it matters; hashing the code that computes a cached
value (the preprocessing, the network, the training) retires the cache whenever that code changes.
The price is a recomputation after a change that does not alter results (a comment), which costs
minutes once, against silently comparing numbers made by different code.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any


def source_hash(*objects: Any) -> str:
  """The first 12 hex digits of the sha1 of the objects' source (functions, classes) or, for
  anything without source (a constant table), its repr."""
  digest = hashlib.sha1()
  for item in objects:
    try:
      text = inspect.getsource(item)
    except (OSError, TypeError):  # Constants, or code without its source file (a frozen build).
      text = repr(item)
    digest.update(text.encode())
  return digest.hexdigest()[:12]
