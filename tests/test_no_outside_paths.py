"""Nothing in the repository refers to files outside it: no tracked file names the `shared` folder
beside the repository (as a `..` path) or an absolute path under the machine's `work` directory, so
everything it cites or runs works from a fresh clone (papers and specs are cited in words, scripts
live in the repository). Reads the files `git ls-files` lists; imports no jax. This file spells
the patterns in pieces so that it does not match itself."""

import os
import re
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The `shared` folder beside the repository (where papers, specs and peer benchmarks were kept),
# and absolute paths under the machine's `work` directory (its checkouts, runs and scratch).
OUTSIDE = re.compile(r"\.\./" + "shared|(?<![\\w.~-])/" + r"work/")


def outside_references(root):
  """`file:line: text` for every line of a tracked file under root that refers outside it."""
  names = subprocess.run(["git", "ls-files", "-z"], cwd=root, check=True, capture_output=True)
  found = []
  for name in names.stdout.decode().split("\0"):
    path = os.path.join(root, name)
    if not name or not os.path.isfile(path) or os.path.islink(path):
      continue
    with open(path, "rb") as f:
      data = f.read()
    if b"\0" in data[:8192]:  # binary (images, checkpoints)
      continue
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
      if OUTSIDE.search(line):
        found.append(f"{name}:{number}: {line.strip()[:160]}")
  return found


def test_no_tracked_file_refers_outside_the_repository():
  if not os.path.isdir(os.path.join(REPO, ".git")) and not os.path.isfile(
      os.path.join(REPO, ".git")):
    pytest.skip("not a git checkout")
  found = outside_references(REPO)
  assert not found, "references to files outside the repository:\n" + "\n".join(found)


def test_the_pattern_catches_both_kinds(tmp_path):
  subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
  (tmp_path / "a.md").write_text("ok\nsee ../" + "shared/spec/x.md\n")
  (tmp_path / "b.py").write_text("RUNS = '/" + "work/runs/demo'\nurl = 'https://x.org/work/y'\n")
  subprocess.run(["git", "add", "."], cwd=tmp_path, check=True)
  found = outside_references(str(tmp_path))
  assert [f.split(": ")[0] for f in found] == ["a.md:2", "b.py:1"], found
