r"""Prints the noise-scheduling paper's Tables 1-4 as our configs encode them, next to the paper.

  python -m rin_diffusion.tools.paper_tables                     # Tables 1 and 2
  python -m rin_diffusion.tools.paper_tables --tables=3,4 --workdir_root=gs://BUCKET/sweeps
  python -m rin_diffusion.tools.paper_tables --cost               # FLOPs and chip-hours
  python -m rin_diffusion.tools.paper_tables --reproduce          # docs/reproduce.md's tables
  python -m rin_diffusion.tools.paper_tables --tables=5 --workdir_root=gs://BUCKET/runs  # FIDs
  python -m rin_diffusion.tools.paper_tables --sweep=SWEEP.py --workdir_root=ROOT  # any sweep
  python -m rin_diffusion.tools.paper_tables --sweep=SWEEP.py --workdir_root=ROOT --layout=grid

Tables 1 and 2 are read from the config files through the same loader the trainer's --config flag
uses (import the file by path, call get_config()); parameter counts come from the model itself
(`param_table.count_params`, jax.eval_shape), never from typed-in numbers. A cell that differs from
the paper shows "ours (paper: X)".

Tables 3 and 4 list the sweep members (configs/sweeps/) with the paper's FID; with --workdir_root
the measured FID of each member (the last record with an 'fid' key in WORKDIR_ROOT/NAME/
metrics.jsonl) is shown beside it.

--cost counts forward FLOPs per example with XLA's cost analysis of the compiled forward pass
(batch 1, on CPU; compiling takes seconds, nothing is run) and checks them against a closed form;
training FLOPs = 4 x forward per example (self-conditioning pass 1: 1x forward; pass 2 forward and
backward: 3x), times batch and steps; chip-hours divide by --peak_tflops x --mfu.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rin_diffusion import paper_configs

_REPO_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_SWEEPS = {3: "configs/sweeps/table3_schedules.py", 4: "configs/sweeps/table4_input_scale.py"}

# Cost-estimate defaults: TPU v4, bf16 peak 275 TFLOP/s per chip, 40 % model FLOPs utilisation.
PEAK_TFLOPS = 275.0
MFU = 0.4
FID_SAMPLES = 50_000


def load(resolution: int, arg: str = ""):
  """The config of configs/imagenet<resolution>.py[:arg], loaded as --config= loads it."""
  path = os.path.join(_REPO_DIR, paper_configs.config_path(resolution))
  return paper_configs.load_config(path + (f":{arg}" if arg else ""))


def _num(value: float) -> str:
  return f"{value:g}"


def _compare(ours: list[str], paper: list[str], names: Sequence[str]) -> str:
  differ = [n for n, a, b in zip(names, ours, paper) if a != b]
  return "yes" if not differ else "no: " + ", ".join(differ)


_TABLE1_HEADER = ["config / paper", "image", "patch", "tokens", "latents", "layers", "heads",
                  "params (M)", "rel. diff", "input scale", "gamma(t)", "matches paper"]


def _table1_rows(label: str, config, paper: dict[str, Any], source: str,
                 count: Callable[[Any], int]) -> list[list[str]]:
  """Two rows: what the config encodes (params from the model), and the paper's row."""
  m, d = config.model, config.diffusion
  params = count(m) / 1e6
  heads = str(m.latent_heads) if m.latent_heads == m.rw_heads else f"{m.latent_heads}/{m.rw_heads}"
  ours = [f"{m.patch_size}x{m.patch_size}", f"{(m.image_size // m.patch_size) ** 2}x{m.tape_dim}",
          f"{m.latent_slots}x{m.latent_dim}", ",".join(map(str, m.blocks)), heads,
          _num(d.input_scale), d.train_schedule]
  schedule = paper_configs.SCHEDULE_SPECS.get(paper["schedule"], paper["schedule"])
  theirs = [f"{paper['patch']}x{paper['patch']}", "x".join(map(str, paper["tokens"])),
            "x".join(map(str, paper["latents"])), ",".join(map(str, paper["blocks"])),
            str(paper["heads"]), _num(paper["input_scale"]), schedule]
  names = ["patch", "tokens", "latents", "layers", "heads", "input scale", "gamma(t)"]
  image = f"{m.image_size}x{m.image_size}x{m.channels}"
  rel = (params - paper["params_m"]) / paper["params_m"] * 100
  return [
      [label, image, *ours[:5], f"{params:.2f}", f"{rel:+.2f} %", *ours[5:],
       _compare(ours, theirs, names)],
      [f"  {source}", image, *theirs[:5], _num(paper["params_m"]), "", theirs[5],
       paper["schedule"], ""],
  ]


def table1(count: Callable[[Any], int] | None = None) -> list[list[str]]:
  """Table 1 rows; `count` counts a model config's parameters (default: param_table's)."""
  if count is None:
    from rin_diffusion.tools.param_table import count_params as count  # Imports jax, the model.
  rows = [_TABLE1_HEADER]
  for resolution in paper_configs.RESOLUTIONS:
    rows += _table1_rows(f"imagenet{resolution}", load(resolution),
                         paper_configs.TABLE1[resolution], "paper", count)
  for (resolution, variant), row in paper_configs.VARIANTS.items():
    paper = dict(paper_configs.TABLE1[resolution], **row)
    rows += _table1_rows(f"imagenet{resolution}:{variant}", load(resolution, variant), paper,
                         row["source"], count)
  return rows


def table2() -> list[list[str]]:
  rows = [["config / paper", "train steps", "batch size", "LR", "LR decay", "label dropout",
           "matches paper"]]
  names = ["steps", "batch", "LR", "decay", "label dropout"]
  for resolution in paper_configs.RESOLUTIONS:
    c, paper = load(resolution), paper_configs.TABLE2[resolution]
    ours = [f"{c.total_steps // 1000}K", str(c.batch_size), _num(c.optimizer.learning_rate),
            c.optimizer.decay, _num(c.diffusion.label_dropout)]
    theirs = [f"{paper['steps'] // 1000}K", str(paper["batch"]), _num(paper["lr"]),
              paper_configs.DECAY_SPECS[paper["decay"]], _num(paper["label_dropout"])]
    rows.append([f"imagenet{resolution}", *ours, _compare(ours, theirs, names)])
    rows.append(["  paper", *theirs[:3], paper["decay"], theirs[4], ""])
  return rows


def shared_hyperparameters() -> list[list[str]]:
  """The settings common to all six configs (paper section 3), as imagenet64 encodes them."""
  c = load(64)
  o, s = c.optimizer, c.sampling
  return [
      ["setting", "configs", "paper"],
      ["optimizer", f"{o.name.upper()} b1={_num(o.b1)} b2={_num(o.b2)} "
       f"weight decay={_num(o.weight_decay)}", "LAMB b1=0.9 b2=0.999 weight decay=0.01"],
      ["self-conditioning rate", _num(c.diffusion.self_cond_rate), "0.9"],
      ["EMA decay", _num(o.ema_decay), "0.9999"],
      ["LR warm-up", f"{o.warmup_steps // 1000}K steps", "not stated (reference code: 10K)"],
      ["sampling", f"{s.sampler}, {s.steps} steps, gamma={c.diffusion.infer_schedule}",
       "1000 DDPM steps, cosine schedule"],
      ["guidance (FID / grids)", f"{_num(s.fid_guidance)} / {_num(s.guidance)}",
       "none (Table 5) / 3 (section 3.5)"],
      ["x_t normalisation", c.diffusion.normalize_input, "variance normalisation (section 2.2)"],
      ["data", f"{c.dataset.name}, {c.dataset.num_classes} classes, "
       f"flip={c.dataset.random_flip}", "class-conditional ImageNet"],
  ]


def read_evaluation(workdir: str) -> dict[str, Any] | None:
  """The last record with an 'fid' key in workdir/metrics.jsonl (None when there is none)."""
  from etils import epath  # Reads local paths and gs:// alike.

  path = epath.Path(workdir) / "metrics.jsonl"
  try:
    lines = path.read_text().splitlines()
  except (FileNotFoundError, OSError):
    return None
  last = None
  for line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    for key in ("fid", "fid50k", "fid_50k"):
      if key in record:
        last = {**record, "fid": record[key]}
  return last


def read_fid(workdir: str) -> float | None:
  """The last 'fid' value in workdir/metrics.jsonl (None when there is none)."""
  record = read_evaluation(workdir)
  return None if record is None else float(record["fid"])


def sweep_table(table: int | str, workdir_root: str = "", layout: str = "members"
                ) -> list[list[str]]:
  """Table 3 or 4 (or any sweep file given by its path, 'SWEEP.py[:ARG]'): one row per member,
  with our FID from WORKDIR_ROOT/NAME/metrics.jsonl when workdir_root is given; layout='grid':
  the paper's Table 4 layout (sweep_grid)."""
  if layout == "grid":
    return sweep_grid(table, workdir_root)
  from rin_diffusion.tools import sweep as sweep_lib

  path = table if isinstance(table, str) else os.path.join(_REPO_DIR, _SWEEPS[table])
  members = sweep_lib.load_sweep(path)
  header = ["member", "config", "gamma(t)", "b", "paper FID"]
  rows = [header + (["our FID"] if workdir_root else [])]
  for m in members:
    row = [m["name"], m["config"], str(m.get("diffusion.train_schedule", "(config)")),
           _num(m["diffusion.input_scale"]) if "diffusion.input_scale" in m else "(config)",
           _num(m["paper_fid"]) if "paper_fid" in m else "-"]
    if workdir_root:
      fid = read_fid(workdir_root.rstrip("/") + "/" + m["name"])
      row.append("-" if fid is None else f"{fid:.2f}")
    rows.append(row)
  return rows


def _resolution(member: dict[str, Any]) -> int | str:
  return member.get("dataset.image_size", member.get("model.image_size", member["config"]))


def _cell_text(values: list[str]) -> str:
  return " / ".join(values) if values else "not yet run"


def sweep_grid(table: int | str, workdir_root: str = "") -> list[list[str]]:
  """The paper's Table 4 layout: a row per (gamma, b), per resolution three columns: our FID, the
  paper's FID (of paper_resolution when the member names one) and our true CAS.

  A cell with several members (seeds) lists their numbers in seed order, 'a / b'.
  """
  from rin_diffusion.tools import sweep as sweep_lib

  path = table if isinstance(table, str) else os.path.join(_REPO_DIR, _SWEEPS[table])
  members = sweep_lib.load_sweep(path)
  # Sizes in increasing order; a member that keeps its config's size is one column of its own.
  resolutions = sorted({_resolution(m) for m in members},
                       key=lambda r: (isinstance(r, str), r if isinstance(r, int) else 0, str(r)))
  rows_keys: list[tuple[str, str]] = []
  cells: dict[tuple[tuple[str, str], Any], list[dict[str, Any]]] = {}
  for m in members:
    key = (str(m.get("diffusion.train_schedule", "(config)")),
           _num(m["diffusion.input_scale"]) if "diffusion.input_scale" in m else "(config)")
    if key not in rows_keys:
      rows_keys.append(key)
    cells.setdefault((key, _resolution(m)), []).append(m)
  paper_of = {_resolution(m): m.get("paper_resolution", _resolution(m)) for m in members}
  header = ["gamma(t)", "b"]
  for r in resolutions:
    size = f"{r}x{r}" if isinstance(r, int) else str(r)
    paper = paper_of[r]
    header += [f"{size} FID", f"paper FID ({paper}x{paper})" if isinstance(paper, int)
               else "paper FID", f"{size} CAS"]
  rows = [header]
  for key in rows_keys:
    row = [*key]
    for r in resolutions:
      group = sorted(cells.get((key, r), []), key=lambda m: m.get("seed", 0))
      fids, cas = [], []
      for m in group:
        record = read_evaluation(workdir_root.rstrip("/") + "/" + m["name"]) if workdir_root \
            else None
        if record is not None:
          fids.append(f"{float(record['fid']):.1f}")
          cas.append("-" if record.get("cas") is None else f"{100 * float(record['cas']):.1f} %")
      papers = sorted({_num(m["paper_fid"]) for m in group if "paper_fid" in m})
      row += [_cell_text(fids) if group else "", " / ".join(papers) or "-",
              _cell_text(cas) if group else ""]
    rows.append(row)
  return rows


# ---------------------------------------------------------------------------------------------
# FLOPs and cost.


def forward_flops_xla(model_config) -> float:
  """Forward FLOPs for one example: XLA's cost analysis of the compiled forward pass (CPU)."""
  import jax
  import jax.numpy as jnp

  from rin_diffusion import flops
  from rin_diffusion import model as model_lib

  net = model_lib.rin_from_config(model_config)
  size, channels = net.image_size, net.channels + net.extra_in_channels
  x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
  gamma = jax.ShapeDtypeStruct((1,), jnp.float32)
  onehot = jax.ShapeDtypeStruct((1, max(net.num_classes, 1)), jnp.float32)
  kwargs = {"class_onehot": onehot} if net.num_classes else {}
  variables = jax.eval_shape(functools.partial(net.init, train=False), jax.random.key(0), x, gamma,
                             **kwargs)

  def forward(variables, x, gamma, kwargs):
    return net.apply(variables, x, gamma, train=False, **kwargs)

  return flops.xla_flops(jax.jit(forward).lower(variables, x, gamma, kwargs).compile())


def forward_flops_analytic(model_config) -> float:
  """Matmul FLOPs (2 per multiply-add) of one RIN forward pass for one example (spec-rin 2)."""
  m = model_config
  n = (m.image_size // m.patch_size) ** 2
  d, big_l, big_d = m.tape_dim, m.latent_slots + m.num_extra_tokens, m.latent_dim
  a = min(d, big_d)
  macs = n * m.patch_size**2 * (m.channels + m.extra_in_channels) * d  # Stem.
  macs += n * d * m.patch_size**2 * m.channels  # Output head.
  macs += big_l * big_d * big_d * 2 * m.latent_mlp_ratio  # Self-conditioning MLP.
  macs += m.num_classes * big_d  # Class projection.
  latent_layer = (4 * big_l * big_d**2 + 2 * big_l**2 * big_d
                  + 2 * m.latent_mlp_ratio * big_l * big_d**2)
  read = (2 * big_l * big_d * a + 2 * n * d * a + 2 * big_l * n * a
          + 2 * m.latent_mlp_ratio * big_l * big_d**2)
  write = (2 * n * d * a + 2 * big_l * big_d * a + 2 * n * big_l * a
           + 2 * m.tape_mlp_ratio * n * d**2)
  macs += sum(m.blocks) * latent_layer + len(m.blocks) * (read + write)
  return 2.0 * macs


def cost_rows(peak_tflops: float = PEAK_TFLOPS, mfu: float = MFU, xla: bool = True
              ) -> list[dict[str, Any]]:
  """Per resolution: forward GFLOPs, training PFLOPs and chip-hours, FID-sampling chip-hours."""
  rows = []
  chip_flops = peak_tflops * 1e12 * mfu
  for resolution in paper_configs.RESOLUTIONS:
    c = load(resolution)
    analytic = forward_flops_analytic(c.model)
    forward = forward_flops_xla(c.model) if xla else analytic
    train_flops = 4 * forward * c.batch_size * c.total_steps
    sample_flops = (forward * FID_SAMPLES * c.sampling.fid_steps
                    * (2 if c.sampling.fid_guidance else 1))
    rows.append(dict(resolution=resolution, forward_gflops=forward / 1e9,
                     analytic_gflops=analytic / 1e9, steps=c.total_steps, batch=c.batch_size,
                     train_eflops=train_flops / 1e18,
                     train_chip_hours=train_flops / chip_flops / 3600,
                     fid_chip_hours=sample_flops / chip_flops / 3600))
  return rows


def cost_table(rows: list[dict[str, Any]]) -> list[list[str]]:
  out = [["config", "fwd GFLOP/example (XLA)", "closed form", "steps x batch", "train EFLOP",
          "train chip-h", "FID-50K sampling chip-h"]]
  for r in rows:
    out.append([f"imagenet{r['resolution']}", f"{r['forward_gflops']:.1f}",
                f"{r['analytic_gflops']:.1f}", f"{r['steps'] // 1000}K x {r['batch']}",
                f"{r['train_eflops']:.1f}", f"{r['train_chip_hours']:,.0f}",
                f"{r['fid_chip_hours']:,.0f}"])
  return out


REPRODUCE_BEGIN = "<!-- generated by: python -m rin_diffusion.tools.paper_tables --reproduce -->"
REPRODUCE_END = "<!-- end of generated section -->"


def reproduce_section(rows: list[dict[str, Any]], peak_tflops: float, mfu: float) -> str:
  """docs/reproduce.md's tables: per paper table row, the slice it fits, its command, its cost.

  The Table 1-2 rows run on the slice, precision and remat of paper_configs.FITTING_PLANS (what
  tools.plan found to fit); every paper config ends with its FID-50k evaluation, which
  `paper_tables --tables=5 --workdir_root=$RUNS` reads back into the table.
  """
  by_res = {r["resolution"]: r for r in rows}
  train = {res: r["train_chip_hours"] for res, r in by_res.items()}
  fid = {res: r["fid_chip_hours"] for res, r in by_res.items()}
  slices = sorted({plan["slice"] for plan in paper_configs.FITTING_PLANS.values()})
  lines = [
      REPRODUCE_BEGIN,
      "```bash",
      f"TPU='--zone=ZONE --accelerator={slices[0]} --provisioning=spot "
      "--tfds_data_dir=gs://BUCKET/tensorflow_datasets'",
      "RUNS=gs://BUCKET/runs",
      "```",
      "",
      "| table row | fits (tools.plan) | command (then the same with `--action=watch`) "
      "| train chip-h | FID chip-h |",
      "|---|---|---|---|---|",
  ]
  for res in paper_configs.RESOLUTIONS:
    plan = paper_configs.FITTING_PLANS[res]
    extra = " ".join(paper_configs.plan_overrides(res))
    command = (f"launch/queued_resources.sh --name=in{res} $TPU "
               f"--config={paper_configs.config_path(res)} --workdir=$RUNS/in{res}"
               + (f" -- {extra}" if extra else ""))
    fits = (f"{plan['slice']}, {plan['dtype']}, remat {'on' if plan['remat'] else 'off'}: "
            f"{plan['peak_gib']:.2f} of {plan['hbm_gib']} GiB")
    lines.append(f"| Tables 1-2, {res}x{res} (paper FID {paper_configs.TABLE5[res]['fid']:g}) "
                 f"| {fits} | `{command}` | {train[res]:,.0f} | {fid[res]:,.0f} |")
  sweep = ("python -m rin_diffusion.tools.sweep {file} --workdir_root=$RUNS/table{t} "
           "--launcher=queued_resources --launcher_flags=\"$TPU\" --only='{only}'")
  t3 = paper_configs.TABLE3_RESOLUTIONS
  sweep_fits = ", ".join(f"{r}: {paper_configs.FITTING_PLANS[r]['peak_gib']:.2f}" for r in t3)
  for label, schedule, _ in paper_configs.TABLE3:
    slug = schedule.replace("@", "-").replace(",", "-").replace(".", "p").replace("--", "-m")
    command = sweep.format(file=_SWEEPS[3], t=3, only=f"^t3-in[0-9]+-{slug}$")
    lines.append(f"| Table 3, {label}, 64/128/256 | as Tables 1-2 ({sweep_fits} GiB) "
                 f"| `{command}` | {sum(train[r] for r in t3):,.0f} "
                 f"| {sum(fid[r] for r in t3):,.0f} |")
  t4 = paper_configs.TABLE4_RESOLUTIONS
  for input_scale in paper_configs.TABLE4:
    command = sweep.format(file=_SWEEPS[4], t=4, only=f"-b{input_scale:.1f}$".replace(".", "p"))
    lines.append(f"| Table 4, b = {input_scale:g}, 2 schedules x 64/128/256 | as Tables 1-2 "
                 f"| `{command}` | {2 * sum(train[r] for r in t4):,.0f} "
                 f"| {2 * sum(fid[r] for r in t4):,.0f} |")
  total_train = sum(train.values()) + (12 + 16) * sum(train[r] for r in t3)
  total_fid = sum(fid.values()) + (12 + 16) * sum(fid[r] for r in t3)
  lines.append(f"| all rows of Tables 1-4 | | | {total_train:,.0f} | {total_fid:,.0f} |")
  lines += ["", f"Per run ({peak_tflops:g} TFLOP/s peak per chip at {mfu * 100:g} % MFU; forward "
            "FLOPs from the closed form):", ""]
  lines += _markdown(cost_table(rows))
  lines.append(REPRODUCE_END)
  return "\n".join(lines)


def fid_table(workdir_root: str) -> list[list[str]]:
  """Tables 1-2's FID column (the paper's Table 5): the paper's FID-50k beside ours, read from
  WORKDIR_ROOT/in<resolution>/metrics.jsonl (the launch commands of docs/reproduce.md)."""
  rows = [["config", "paper FID", "paper IS", "our FID"]]
  for res in paper_configs.RESOLUTIONS:
    ours = read_fid(workdir_root.rstrip("/") + f"/in{res}") if workdir_root else None
    rows.append([f"imagenet{res}", _num(paper_configs.TABLE5[res]["fid"]),
                 _num(paper_configs.TABLE5[res]["inception_score"]),
                 "-" if ours is None else f"{ours:.2f}"])
  return rows


def _markdown(rows: list[list[str]]) -> list[str]:
  lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
  return lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows[1:]]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m rin_diffusion.tools.paper_tables",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--tables", default="1,2",
                      help="Comma-separated subset of 1,2,3,4,5 (5: FID per resolution, ours "
                           "from --workdir_root/in<R>).")
  parser.add_argument("--workdir_root", default="",
                      help="Tables 3/4: read each member's FID from WORKDIR_ROOT/NAME.")
  parser.add_argument("--sweep", default="",
                      help="A sweep file to tabulate like Tables 3/4 (with --workdir_root: our "
                           "FID per member), instead of --tables.")
  parser.add_argument("--layout", default="members", choices=("members", "grid"),
                      help="--sweep: one row per member, or 'grid': the paper's Table 4 layout "
                           "(rows gamma and b; per resolution our FID, the paper's, our CAS).")
  parser.add_argument("--cost", action="store_true", help="Print FLOPs and chip-hours.")
  parser.add_argument("--reproduce", action="store_true",
                      help="Print docs/reproduce.md's generated section (commands and costs).")
  parser.add_argument("--peak_tflops", type=float, default=PEAK_TFLOPS)
  parser.add_argument("--mfu", type=float, default=MFU)
  args = parser.parse_args(argv)
  try:
    args.tables = sorted({int(t) for t in args.tables.split(",") if t.strip()})
  except ValueError:
    parser.error(f"--tables={args.tables!r}: allowed: a comma-separated subset of 1,2,3,4,5")
  if not set(args.tables) <= {1, 2, 3, 4, 5}:
    parser.error(f"--tables={args.tables}: allowed: a comma-separated subset of 1,2,3,4,5")
  if not 0 < args.mfu <= 1 or args.peak_tflops <= 0:
    parser.error("--mfu must be in (0, 1] and --peak_tflops > 0")
  return args


def main(argv: Sequence[str] | None = None) -> None:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  if args.reproduce or args.cost:
    rows = cost_rows(args.peak_tflops, args.mfu, xla=not args.reproduce)
    if args.reproduce:
      print(reproduce_section(rows, args.peak_tflops, args.mfu))
    else:
      print(f"Training cost at the paper's batch size ({args.peak_tflops:g} TFLOP/s per chip, "
            f"{args.mfu * 100:g} % MFU; train = 4 x forward x batch x steps)\n")
      print("\n".join(_markdown(cost_table(rows))))
    return
  if args.sweep:
    try:
      rows = sweep_table(args.sweep, args.workdir_root, args.layout)
    except ValueError as error:
      print(f"paper_tables: error: --sweep={args.sweep}: {error}", file=sys.stderr)
      sys.exit(2)
    print(f"Sweep {args.sweep} (FID and CAS: the last 'fid' record of each member's "
          "metrics.jsonl)\n")
    print("\n".join(_markdown(rows)))
    return
  sections = {
      1: [("Table 1: model hyper-parameters (configs vs paper; params from the model)", table1)],
      2: [("Table 2: training hyper-parameters (configs vs paper)", table2),
          ("Shared hyper-parameters (paper section 3; all six configs)", shared_hyperparameters)],
      3: [("Table 3: FID per training schedule, input scale 1 (sweep members)",
           lambda: sweep_table(3, args.workdir_root))],
      4: [("Table 4: FID per input scale (sweep members)",
           lambda: sweep_table(4, args.workdir_root))],
      5: [("Table 5: FID-50k per resolution (ours: the final evaluation of WORKDIR_ROOT/in<R>)",
           lambda: fid_table(args.workdir_root))],
  }
  blocks = []
  for t in args.tables:
    for title, build in sections[t]:
      blocks.append(title + "\n\n" + "\n".join(_markdown(build())))
  print("\n\n".join(blocks))


if __name__ == "__main__":
  main()
