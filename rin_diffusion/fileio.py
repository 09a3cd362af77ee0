"""Writing a file so that readers and concurrent writers never see half of it, and reading the
records of a run's metrics.jsonl that a kill may have cut short."""

from __future__ import annotations

import json
import os
import uuid

from etils import epath


def write_bytes_atomically(path: epath.PathLike, data: bytes) -> None:
  """Writes `data` to `path` (creating its folder) through a temporary file of its own, then
  replaces `path`.

  Two processes that build the same cache entry at once (two runs evaluating against the same
  reference statistics) each write their own temporary file, and the last replace wins; a
  reader sees the old file or a whole new one, never a partial one.
  """
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = path.parent / f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  try:
    temporary.write_bytes(data)
    temporary.replace(path)
  finally:
    if temporary.exists():
      temporary.unlink()


def has_eval_record(metrics_path: epath.PathLike, step: int) -> bool:
  """Whether the metrics.jsonl at `metrics_path` holds an evaluation record of `step` (a missing
  file holds none; a line cut short by a kill is not a record)."""
  path = epath.Path(metrics_path)
  try:
    lines = path.read_text().splitlines()
  except (FileNotFoundError, OSError):
    return False
  for line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if record.get("mode") == "eval" and record.get("step") == step:
      return True
  return False
