"""The import graph of rin_diffusion: no cycle, and no module importing a layer above its own.

The layers are the ```layers block of docs/architecture.md, read here, so the page and the code
cannot drift apart. Every import counts: module level, inside functions, under TYPE_CHECKING.
Parsing only (ast), nothing is imported, so this runs in a fraction of a second.
"""

from __future__ import annotations

import ast
import fnmatch
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = "rin_diffusion"
ARCHITECTURE = REPO / "docs" / "architecture.md"


def package_modules(root: pathlib.Path = REPO / PACKAGE) -> dict[str, pathlib.Path]:
  """Dotted module name -> file, for every .py under the package (packages by their __init__)."""
  modules = {}
  for path in sorted(root.rglob("*.py")):
    parts = path.relative_to(root.parent).with_suffix("").parts
    if parts[-1] == "__init__":
      parts = parts[:-1]
    modules[".".join(parts)] = path
  return modules


def _known(name: str, modules: dict[str, pathlib.Path]) -> str | None:
  """The longest prefix of `name` that is one of our modules (an attribute import names its module)."""
  while name and name not in modules:
    name = name.rpartition(".")[0]
  return name or None


def imports_of(module: str, path: pathlib.Path,
               modules: dict[str, pathlib.Path]) -> dict[str, int]:
  """Our modules that `module` imports anywhere in its file -> the line of the first such import.

  `from pkg import name` is an edge to pkg.name when that is a module, else to pkg. Importing a
  submodule also runs its package's __init__, but that is the package's edge, not this module's.
  """
  package = module if path.name == "__init__.py" else module.rpartition(".")[0]
  found: dict[str, int] = {}

  def add(target: str | None, line: int) -> None:
    if target and target != module:
      found.setdefault(target, line)

  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      for alias in node.names:
        add(_known(alias.name, modules), node.lineno)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # Relative: `from . import x`, `from ..data import pipeline`.
        anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      for alias in node.names:
        full = f"{base}.{alias.name}"
        add(full if full in modules else _known(base, modules), node.lineno)
  return found


def import_graph() -> dict[str, dict[str, int]]:
  modules = package_modules()
  return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
  """One cycle as [a, b, ..., a], or None (depth-first search, iterative)."""
  state: dict[str, int] = {}  # 1: on the current path, 2: done.
  for start in sorted(graph):
    if start in state:
      continue
    path, iterators = [start], [iter(sorted(graph[start]))]
    state[start] = 1
    while path:
      nxt = next(iterators[-1], None)
      if nxt is None:
        state[path.pop()] = 2
        iterators.pop()
      elif state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      elif nxt not in state:
        state[nxt] = 1
        path.append(nxt)
        iterators.append(iter(sorted(graph.get(nxt, ()))))
  return None


def read_layers(text: str) -> list[tuple[int, str, tuple[str, ...]]]:
  """(layer, group, module patterns) per line of the ```layers block; '#' starts a comment.

  A line is `<layer> <pattern> ...`; lines with the same layer number are sibling groups.
  """
  block = re.search(r"^```layers\n(.*?)^```", text, re.M | re.S)
  if block is None:
    raise AssertionError(f"{ARCHITECTURE} has no ```layers block.")
  rows = []
  for line in block.group(1).splitlines():
    words = line.split("#", 1)[0].split()
    if words:
      rows.append((int(words[0]), " ".join(words[1:]), tuple(words[1:])))
  return rows


def place(module: str, rows) -> list[tuple[int, str]]:
  """The (layer, group) rows whose patterns match `module` ('x.*' is package x and all below it)."""
  short = module.removeprefix(PACKAGE).removeprefix(".") or PACKAGE
  hits = []
  for layer, group, patterns in rows:
    for pattern in patterns:
      if fnmatch.fnmatchcase(short, pattern) or (pattern.endswith(".*") and short == pattern[:-2]):
        hits.append((layer, group))
        break
  return hits


def layer_violations(graph, rows) -> list[str]:
  """Every import of a higher layer, or of a sibling group of the same layer.

  Modules without a row are skipped here (test_every_module_has_one_layer names them).
  """
  where = {module: hits[0] for module in graph if (hits := place(module, rows))}
  problems = []
  for module, targets in sorted(graph.items()):
    if module not in where:
      continue
    layer, group = where[module]
    for target, line in sorted(targets.items()):
      if target not in where:
        continue
      target_layer, target_group = where[target]
      if target_layer > layer or (target_layer == layer and target_group != group):
        problems.append(f"{module} (layer {layer}: {group}) imports {target} (layer "
                        f"{target_layer}: {target_group}) at line {line}")
  return problems


@pytest.fixture(scope="module")
def graph():
  return import_graph()


@pytest.fixture(scope="module")
def rows():
  return read_layers(ARCHITECTURE.read_text())


def test_graph_sees_every_kind_of_import(tmp_path):
  root = tmp_path / PACKAGE
  (root / "sub").mkdir(parents=True)
  files = {
      "__init__.py": "",
      "a.py": "from rin_diffusion import b\n",
      "b.py": "def f():\n  import rin_diffusion.sub.c\n",
      "sub/__init__.py": "",
      "sub/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n  from .. import d\n",
      "d.py": "from rin_diffusion.sub.c import thing\nfrom .a import name\n",
  }
  for name, text in files.items():
    (root / name).write_text(text)
  modules = package_modules(root)
  graph = {m: imports_of(m, p, modules) for m, p in modules.items()}
  assert set(graph["rin_diffusion.a"]) == {"rin_diffusion.b"}
  assert set(graph["rin_diffusion.b"]) == {"rin_diffusion.sub.c"}
  assert set(graph["rin_diffusion.sub.c"]) == {"rin_diffusion.d"}
  assert set(graph["rin_diffusion.d"]) == {"rin_diffusion.sub.c", "rin_diffusion.a"}
  assert find_cycle(graph) == ["rin_diffusion.a", "rin_diffusion.b", "rin_diffusion.sub.c",
                               "rin_diffusion.d", "rin_diffusion.a"]


def test_no_import_cycle(graph):
  cycle = find_cycle(graph)
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_module_has_one_layer(graph, rows):
  problems = [f"{module}: {place(module, rows) or 'no row'}" for module in sorted(graph)
              if len(place(module, rows)) != 1]
  assert not problems, (f"each module needs exactly one row in the ```layers block of "
                        f"{ARCHITECTURE.name}: " + "; ".join(problems))


def test_no_import_of_a_higher_layer_or_a_sibling(graph, rows):
  problems = layer_violations(graph, rows)
  assert not problems, "\n".join(problems)


def test_layer_check_catches_an_upward_import(graph, rows):
  bad = {module: dict(targets) for module, targets in graph.items()}
  bad["rin_diffusion.schedules"]["rin_diffusion.model"] = 1  # Diffusion math importing a network.
  bad["rin_diffusion.train"]["rin_diffusion.cascade.stage"] = 1  # The trainer importing the cascade.
  problems = layer_violations(bad, rows)
  assert len(problems) == 2 and problems[0].startswith("rin_diffusion.schedules (layer 1")
