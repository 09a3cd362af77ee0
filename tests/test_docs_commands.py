"""Every command line the docs show is checked against the code, without running any of them.

The docs are README.md, docs/*.md, launch/README.md and benchmarks/README.md; their code blocks
(fenced, or indented by 4 spaces after a blank line) are read as shell. A command is

  * `[prefix] PYTHON -m rin_diffusion.<module> ...` or `PYTHON benchmarks/<script>.py ...`
    (PYTHON: python, python3, .venv/bin/python, $PY, PYTHON, ...; prefix: timeout, env, nice, ...):
    the module or script exists; every `--flag` is one it defines (read from its own `--helpfull`
    or, for argparse, `--help` output, so flags defined under `__main__` count too); every
    `--config=path[:arg]` and `--pipeline=path[:arg]` loads with that arg; every
    `--config.a.b=value` names a field of that config (and a value its type accepts); a
    repository path given as a positional argument exists;
  * `make <target>`: the target is a rule of the Makefile;
  * `[bash] launch/<script>.sh ...` and `[bash] benchmarks/<script>.sh`: the script exists, `bash -n`
    parses it, and a launcher's flags are keys of its FLAGS table; what follows a launcher's `--`
    goes to rin_diffusion.main (rin_diffusion.cascade with --pipeline) and is checked as above.

Shell syntax: `\\` continuations, `#` comments, `NAME="..."` assignments in the same block (used as
`$NAME`, they are expanded; a value that is itself a command is checked as one). Opaque, i.e. not
checked: a value with `$`, `<...>` or `...`, and a config path with an ALL-CAPS word
(`configs/X.py`); `[...]` optional groups count as given. A block that is illustrative only is
skipped by the line `<!-- not-checked: <reason> -->` right before its fence; the test reports
how many commands it checked and which blocks it skipped.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import re
import shlex
import subprocess
import sys

import ml_collections
import pytest

from rin_diffusion import paper_configs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ("README.md", "docs/*.md", "launch/README.md", "benchmarks/README.md")
SHELL_INFO_STRINGS = ("", "bash", "sh", "shell", "console")
SKIP_MARKER = re.compile(r"^<!--\s*not-checked:\s*(?P<reason>\S.*?)\s*-->$")
# Fewer than this many checked commands means the extraction broke, not that the docs shrank.
MIN_CHECKED = 40

_INTERPRETER = re.compile(r"^(?:\S*/)?python[0-9.]*$|^\$\{?PY(?:THON)?\}?$|^PYTHON$")
_WRAPPERS = {"timeout", "env", "nice", "time", "exec", "srun", "sudo", "nohup"}
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_PLACEHOLDER = re.compile(r"<[^\s<>][^<>]*>")  # <the row's overrides>, <name>: no quotes inside.
_SEPARATORS = (";", "&&", "||", "|", "&")
_COMMAND_HINT = re.compile(r"-m rin_diffusion|benchmarks/|launch/|^\s*make ")
_REPO_PATH = re.compile(r"^(?:configs|benchmarks|launch|rin_diffusion|tests|docs)/\S+$")


@dataclasses.dataclass(frozen=True)
class Block:
  path: str  # Relative to the repository root.
  line: int  # 1-based line of the block's first code line.
  lines: tuple[str, ...]
  skip_reason: str = ""


@dataclasses.dataclass(frozen=True)
class Command:
  kind: str  # 'python' (module or script), 'make' or 'script'.
  target: str  # Module name ('rin_diffusion.main'), script path or make target.
  args: tuple[str, ...]
  where: str  # path:line, for messages.


# ----------------------------------------------------------------------------------------------
# Markdown -> code blocks -> logical shell lines -> commands.


def code_blocks(text: str, path: str) -> list[Block]:
  """Shell blocks: fenced ones (info string bash, sh, shell, console or none) and ones indented
  by 4+ spaces after a blank line."""
  lines = text.split("\n")
  blocks, i = [], 0

  def marker(before: int) -> str:
    j = before - 1
    while j >= 0 and not lines[j].strip():
      j -= 1
    match = SKIP_MARKER.match(lines[j].strip()) if j >= 0 else None
    return match.group("reason") if match else ""

  while i < len(lines):
    stripped = lines[i].strip()
    if stripped.startswith("```"):
      end = i + 1
      while end < len(lines) and not lines[end].strip().startswith("```"):
        end += 1
      if stripped[3:].strip() in SHELL_INFO_STRINGS:
        blocks.append(Block(path, i + 2, tuple(lines[i + 1:end]), marker(i)))
      i = end + 1
    elif lines[i].startswith("    ") and stripped and (i == 0 or not lines[i - 1].strip()):
      end = i
      while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
        end += 1
      blocks.append(Block(path, i + 1, tuple(line[4:] for line in lines[i:end]), marker(i)))
      i = end
    else:
      i += 1
  return blocks


def logical_lines(block: Block) -> list[tuple[int, str]]:
  """(line number, text) with `\\`-newline continuations joined."""
  out, buffer, start = [], "", None
  for offset, line in enumerate(block.lines):
    if start is None:
      start = block.line + offset
    if line.rstrip().endswith("\\"):
      buffer += line.rstrip()[:-1] + " "
      continue
    out.append((start, buffer + line))
    buffer, start = "", None
  if buffer:
    out.append((start, buffer))
  return out


def _split(text: str) -> list[str]:
  """Shell words; a trailing ';' is a word of its own ('|' inside a word stays: `--mode=a|b`)."""
  words = []
  for word in shlex.split(_PLACEHOLDER.sub("<placeholder>", text), comments=True):
    if word.endswith(";") and word != ";":
      words += [word[:-1], ";"]
    else:
      words.append(word)
  return words


def _unbracket(token: str) -> str:
  """'[--evaluate]' -> '--evaluate'; 'configs/X.py[:ARG]' -> 'configs/X.py'."""
  token = re.sub(r"\[[^\[\]]*\]", "", token) if not token.startswith("[") else token
  return token.lstrip("[").rstrip("]")


def _expand(tokens: list[str], variables: dict[str, list[str]]) -> list[str]:
  out = []
  for token in tokens:
    name = re.fullmatch(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", token)
    if name and name.group(1) in variables:
      out.extend(variables[name.group(1)])
    else:
      out.append(token)
  return out


def _command_in(tokens: list[str], where: str) -> Command | None:
  """The first command `tokens` (one simple command, wrappers allowed) holds, else None."""
  for i, token in enumerate(tokens):
    rest = tokens[i + 1:]
    if _INTERPRETER.match(token) and len(rest) >= 2 and rest[0] == "-m" and (
        rest[1].startswith("rin_diffusion")):
      return Command("python", rest[1], tuple(rest[2:]), where)
    if _INTERPRETER.match(token) and rest and re.fullmatch(r"benchmarks/\S+\.py", rest[0]):
      return Command("python", rest[0], tuple(rest[1:]), where)
    if token == "make" and i == 0:
      targets = [t for t in rest if not t.startswith("-") and "=" not in t]
      return Command("make", targets[0] if targets else "", tuple(rest), where)
    if token == "bash" and rest and re.fullmatch(r"(launch|benchmarks)/\S+\.sh", rest[0]):
      return Command("script", rest[0], tuple(rest[1:]), where)
    if re.fullmatch(r"(launch|benchmarks)/\S+\.sh", token) and (
        i == 0 or tokens[i - 1] in _WRAPPERS or _ASSIGNMENT.match(tokens[i - 1])):
      return Command("script", token, tuple(rest), where + " (run directly)")
  return None


def commands_in_block(block: Block) -> list[Command]:
  """The block's commands, in order; `NAME=value` assignments are expanded in later commands."""
  variables: dict[str, list[str]] = {}
  found = []
  for line_number, text in logical_lines(block):
    where = f"{block.path}:{line_number}"
    try:
      tokens = _split(text)
    except ValueError as error:  # An unbalanced quote: broken shell, if it was meant as a command.
      if _COMMAND_HINT.search(text):
        found.append(Command("unparsable", str(error), (text,), where))
      continue
    # One simple command per ';', '&&', '||' or '|' segment.
    segment: list[str] = []
    for token in [*tokens, ";"]:
      if token in _SEPARATORS:
        if segment and all(_ASSIGNMENT.match(t) for t in segment):
          for assignment in segment:
            name, value = assignment.split("=", 1)
            words = _expand(_split(value), variables) if value else []
            command = _command_in(words, where)
            if command:  # Checked here; `$NAME` later stays opaque rather than counted twice.
              found.append(command)
            else:
              variables[name] = words
        elif segment:
          command = _command_in(_expand(segment, variables), where)
          if command:
            found.append(command)
        segment = []
      else:
        segment.append(token)
  return found


def doc_files(root: str = REPO) -> list[str]:
  paths = []
  for pattern in DOCS:
    paths.extend(sorted(glob.glob(os.path.join(root, pattern))))
  return [os.path.relpath(path, root) for path in paths]


# ----------------------------------------------------------------------------------------------
# What the code defines.


def _opaque(value: str) -> bool:
  return "$" in value or "<placeholder>" in value or "..." in value


def _opaque_path(path: str) -> bool:
  return _opaque(path) or any(re.fullmatch(r"[A-Z][A-Z0-9_]*", word)
                              for word in re.split(r"[^A-Za-z0-9]+", path) if word)


class Checker:
  """Checks commands; caches every module's flags and every config it loads."""

  def __init__(self, root: str = REPO):
    self.root = root
    self._flags_cache: dict[str, frozenset[str] | str] = {}

  # Flags of a python entry point: from its own help, so whatever defines them counts.
  def entry_source(self, target: str) -> str | None:
    if target.endswith(".py"):
      path = os.path.join(self.root, target)
    else:
      base = os.path.join(self.root, *target.split("."))
      path = next((p for p in (base + ".py", os.path.join(base, "__main__.py"))
                   if os.path.isfile(p)), "")
    return path if os.path.isfile(path) else None

  def prefetch_flags(self, targets: set[str]) -> None:
    """Starts every entry point's help at once (each imports jax or TF: seconds apiece)."""
    pending = {t: self._start_help(t) for t in targets if t not in self._flags_cache
               and self.entry_source(t)}
    for target, process in pending.items():
      self._flags_cache[target] = self._finish_help(target, process)

  def _start_help(self, target: str) -> subprocess.Popen:
    with open(self.entry_source(target), encoding="utf-8") as f:
      argparse_cli = "argparse" in f.read()
    runner = [target] if target.endswith(".py") else ["-m", target]
    return subprocess.Popen([sys.executable, *runner, "--help" if argparse_cli else "--helpfull"],
                            cwd=self.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)

  @staticmethod
  def _finish_help(target: str, process: subprocess.Popen) -> frozenset[str] | str:
    try:  # Generous: a loaded machine starves these imports, and a hang is still a finding.
      output, _ = process.communicate(timeout=600)
    except subprocess.TimeoutExpired:
      process.kill()
      return f"{target} --help did not finish in 600 s: {process.communicate()[0][-800:]}"
    names = set()
    for match in re.finditer(r"(?m)^  (?:-\w(?: \S+)?, )?--(\[no\])?([A-Za-z0-9][\w-]*)", output):
      names.add(match.group(2))
      if match.group(1):
        names.add("no" + match.group(2))
    if not names:  # A crash on import, say: report its output.
      return f"{target} --help printed no flags (exit {process.returncode}): {output[-800:]}"
    return frozenset(names)

  def flags(self, target: str) -> frozenset[str] | str:
    if target not in self._flags_cache:
      self.prefetch_flags({target})
    return self._flags_cache[target]

  @functools.cache  # noqa: B019 -- one Checker per session; configs are loaded once.
  def config(self, spec: str) -> ml_collections.ConfigDict | str:
    cwd = os.getcwd()
    try:
      os.chdir(self.root)
      return paper_configs.load_config(spec)
    except Exception as error:  # noqa: BLE001 -- any failure to load is the finding.
      return f"{type(error).__name__}: {error}"
    finally:
      os.chdir(cwd)

  @functools.cached_property
  def make_targets(self) -> frozenset[str]:
    with open(os.path.join(self.root, "Makefile"), encoding="utf-8") as f:
      text = f.read()
    return frozenset(name for rule in re.findall(r"(?m)^([A-Za-z0-9_./ -]+):(?!=)", text)
                     for name in rule.split())

  def launcher_flags(self, script: str) -> frozenset[str]:
    with open(os.path.join(self.root, script), encoding="utf-8") as f:
      table = re.search(r"declare -A FLAGS=\((.*?)\n\)", f.read(), re.S)
    keys = set(re.findall(r"\[(\w+)\]=", table.group(1))) if table else set()
    return frozenset(keys | {"dry_run", "help"})

  # Checks: each returns a list of problems, '' nowhere.
  def check(self, command: Command) -> list[str]:
    problem = f"{command.where}: {command.kind} {command.target}"
    if command.kind == "unparsable":
      return [f"{command.where}: not valid shell ({command.target}): {command.args[0]}"]
    if command.kind == "make":
      if command.target not in self.make_targets:
        return [f"{problem}: no such Makefile target (have {sorted(self.make_targets)})"]
      return []
    if command.kind == "script":
      return self._check_script(command, problem)
    return self._check_python(command.target, command.args, problem)

  def _check_script(self, command: Command, problem: str) -> list[str]:
    path = os.path.join(self.root, command.target)
    if not os.path.isfile(path):
      return [f"{problem}: no such script"]
    errors = []
    if command.where.endswith("(run directly)") and not os.access(path, os.X_OK):
      errors.append(f"{problem}: run directly but not executable")
    syntax = subprocess.run(["bash", "-n", path], capture_output=True, text=True, check=False)
    if syntax.returncode:
      errors.append(f"{problem}: bash -n: {syntax.stderr.strip()}")
    if not command.target.startswith("launch/"):
      return errors
    args = list(command.args)
    trainer_args = args[args.index("--") + 1:] if "--" in args else []
    args = args[:args.index("--")] if "--" in args else args
    known = self.launcher_flags(command.target)
    for arg in map(_unbracket, args):
      if arg.startswith("--"):
        name = arg[2:].split("=", 1)[0].replace("-", "_")
        if name not in known:
          errors.append(f"{problem}: unknown flag --{name} (allowed: {sorted(known)})")
      elif arg and not _opaque(arg):
        errors.append(f"{problem}: positional argument {arg!r} (the launchers take flags only)")
    values = dict(a[2:].split("=", 1) for a in map(_unbracket, args)
                  if a.startswith("--") and "=" in a)
    program = "rin_diffusion.cascade" if "pipeline" in values else "rin_diffusion.main"
    source = ([f"--pipeline={values['pipeline']}"] if "pipeline" in values else
              [f"--config={values['config']}"] if "config" in values else [])
    errors += self._check_python(program, (*source, *trainer_args), problem + " -- ")
    return errors

  def _check_python(self, target: str, args: tuple[str, ...], problem: str) -> list[str]:
    if self.entry_source(target) is None:
      return [f"{problem}: no such module or script"]
    flags = self.flags(target)
    if isinstance(flags, str):
      return [f"{problem}: {flags}"]
    errors, config = [], None
    for arg in map(_unbracket, args):
      if not arg.startswith("--"):
        if _REPO_PATH.match(arg) and not _opaque_path(arg):
          if not os.path.exists(os.path.join(self.root, arg.split(":", 1)[0])):
            errors.append(f"{problem}: {arg}: no such file")
        continue
      name, _, value = arg[2:].partition("=")
      if name.startswith("config.") and "config" in flags:
        continue  # After --config is known: below.
      if name not in flags:
        errors.append(f"{problem}: unknown flag --{name}")
      elif name in ("config", "pipeline") and value and not _opaque_path(value):
        config = self.config(value)
        if isinstance(config, str):
          errors.append(f"{problem}: --{name}={value} does not load: {config}")
          config = None
    for arg in map(_unbracket, args):
      if arg.startswith("--config.") and config is not None:
        field, _, value = arg[len("--config."):].partition("=")
        error = override_error(config, field, value)
        if error:
          errors.append(f"{problem}: --config.{field}: {error}")
    return errors


def override_error(config: ml_collections.ConfigDict, field: str, value: str) -> str:
  """'' when `--config.<field>=<value>` fits the config; else what is wrong."""
  node = config
  parts = field.split(".")
  for depth, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      where = ".".join(parts[:depth]) or "the config"
      known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      return f"no field {part!r} in {where} (fields: {', '.join(known)})"
    node = node[part]
  if isinstance(node, ml_collections.ConfigDict):
    return "names a group of fields, not a field"
  if _opaque(value):
    return ""
  try:
    if isinstance(node, bool):
      if value not in ("True", "False", "true", "false", "1", "0"):
        return f"{value!r} is not a bool"
    elif isinstance(node, int):
      int(value)
    elif isinstance(node, float):
      float(value)
  except ValueError:
    return f"{value!r} is not a {type(node).__name__} (the field's type)"
  return ""


def check_docs(paths: list[str], checker: Checker) -> tuple[int, list[str], list[str]]:
  """(commands checked, problems, skipped blocks) of the code blocks in `paths`."""
  blocks = []
  for path in paths:
    with open(os.path.join(checker.root, path), encoding="utf-8") as f:
      blocks.extend(code_blocks(f.read(), path))
  skipped = [f"{b.path}:{b.line}: {b.skip_reason}" for b in blocks if b.skip_reason]
  commands = [c for b in blocks if not b.skip_reason for c in commands_in_block(b)]
  checker.prefetch_flags({c.target for c in commands if c.kind == "python"} | (
      {"rin_diffusion.main", "rin_diffusion.cascade"}
      if any(c.target.startswith("launch/") for c in commands) else set()))
  problems = [p for c in commands for p in checker.check(c)]
  return len(commands), problems, skipped


@pytest.fixture(scope="module")
def checker():
  return Checker()


def test_every_docs_command_matches_the_code(checker):
  count, problems, skipped = check_docs(doc_files(), checker)
  print(f"checked {count} commands in {len(doc_files())} files; skipped {len(skipped)} blocks"
        + "".join(f"\n  skipped {s}" for s in skipped))
  assert not problems, f"{len(problems)} of {count} docs commands are wrong:\n" + "\n".join(problems)
  assert count >= MIN_CHECKED, f"only {count} commands found: is the extraction broken?"


BAD_SNIPPET = """\
Some text.

```bash
# A comment, then a continued command with a typo in a flag and a missing config field:
.venv/bin/python -m rin_diffusion.main --config=configs/fashion_mnist.py:tiny \\
    --workdri=/tmp/x --config.model.no_such_field=3   # trailing comment
python -m rin_diffusion.main --config=configs/fashion_mnist.py --config.total_steps=many
python -m rin_diffusion.no_such_module --flag=1
python -m rin_diffusion.main --config=configs/no_such_config.py --workdir=$W
make no-such-target
launch/local.sh --config=configs/fashion_mnist.py --workdir=/tmp/f --procs=2 -- --config.x=1
bash benchmarks/no_such.sh
```

<!-- not-checked: shows a flag that does not exist -->
```bash
python -m rin_diffusion.main --not-a-flag
```

    timeout 60 .venv/bin/python benchmarks/train_step.py --config=configs/X.py --stepz=2
"""


def test_checker_rejects_a_bad_snippet(checker, tmp_path):
  # The snippet lives in a copy of the repository's root: same code, a doc the test controls.
  doc = tmp_path / "bad.md"
  doc.write_text(BAD_SNIPPET)
  blocks = code_blocks(BAD_SNIPPET, "bad.md")
  assert [b.skip_reason for b in blocks] == ["", "shows a flag that does not exist", ""]
  commands = [c for b in blocks if not b.skip_reason for c in commands_in_block(b)]
  assert [c.target for c in commands] == [
      "rin_diffusion.main", "rin_diffusion.main", "rin_diffusion.no_such_module",
      "rin_diffusion.main", "no-such-target", "launch/local.sh", "benchmarks/no_such.sh",
      "benchmarks/train_step.py"]
  problems = [p for c in commands for p in checker.check(c)]
  text = "\n".join(problems)
  for expected in ("bad.md:5: python rin_diffusion.main: unknown flag --workdri",
                   "--config.model.no_such_field: no field 'no_such_field' in model",
                   "--config.total_steps: 'many' is not a int",
                   "rin_diffusion.no_such_module: no such module",
                   "--config=configs/no_such_config.py does not load",
                   "no-such-target: no such Makefile target",
                   "unknown flag --procs",
                   "-- : --config.x: no field 'x'",
                   "benchmarks/no_such.sh: no such script",
                   "benchmarks/train_step.py: unknown flag --stepz"):
    assert expected in text, f"{expected!r} not in:\n{text}"
  assert "--config=configs/X.py" not in text  # An ALL-CAPS placeholder path is opaque.
  assert len(problems) == 10, text


def test_shell_reading():
  block = Block("x.md", 1, (
      'EVAL="python -m rin_diffusion.main --mode=eval \\',
      '      --workdir=$W"',
      'FLAGS="--config.seed=1 $MORE"',
      "$EVAL   # the command above, not a new one",
      "python -m rin_diffusion.main $FLAGS <the row's overrides> && make test",
      "for LP in 1 2; do python -m rin_diffusion.tools.fid a b --lowpass=$LP; done",
  ))
  commands = commands_in_block(block)
  assert [(c.target, c.args) for c in commands] == [
      ("rin_diffusion.main", ("--mode=eval", "--workdir=$W")),
      ("rin_diffusion.main", ("--config.seed=1", "$MORE", "<placeholder>")),
      ("test", ("test",)),
      ("rin_diffusion.tools.fid", ("a", "b", "--lowpass=$LP")),
  ]
  assert [c.where for c in commands] == ["x.md:1", "x.md:5", "x.md:5", "x.md:6"]
