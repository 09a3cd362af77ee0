"""The paper configs (configs/imagenet*.py), their variants, the sweeps and the table tool.

Everything is built abstractly (jax.eval_shape through count_params): no parameters are
allocated and no ImageNet files are needed.
"""

import functools
import importlib.util
import json
import os

import pytest

from rin_diffusion import config_lib, paper_configs
from rin_diffusion.tools import paper_tables
from rin_diffusion.tools.param_table import count_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The paper's Tables 1 and 2, typed in again here (independently of paper_configs) so that a typo
# in either place fails: (patch, tokens, latents, blocks, params M, b, gamma, steps, lr, decay,
# label dropout).
PAPER = {
    64: (4, 256, (128, 768), (6,) * 4, 214, 1.0, "linear", 150_000, 2e-3, "cosine@0.7", 0.0),
    128: (4, 1024, (128, 768), (6,) * 4, 215, 0.6, "linear", 250_000, 2e-3, "cosine@0.7", 0.0),
    256: (8, 1024, (256, 768), (6,) * 6, 319, 0.5, "linear", 250_000, 2e-3, "cosine@0.7", 0.0),
    512: (8, 4096, (256, 768), (6,) * 6, 320, 0.2, "cosine@0.2,1,1", 1_000_000, 1e-3, "constant",
          0.0),
    768: (8, 9216, (256, 768), (8,) * 6, 408, 0.1, "linear", 1_000_000, 1e-3, "constant", 0.1),
    1024: (8, 16384, (256, 768), (8,) * 6, 412, 0.1, "linear", 910_000, 1e-3, "constant", 0.1),
}
# (resolution, variant) -> (patch, blocks, expected parameters in M).
VARIANTS = {
    (64, "patch8"): (8, (6,) * 4, 214),  # The .html version of Table 1.
    (128, "patch8"): (8, (6,) * 4, 215),
    (64, "release"): (8, (4,) * 4, 157.78),  # pix2seq's released config (spec-rin 2.8).
}


def load(resolution, arg=None):
  path = os.path.join(REPO, "configs", f"imagenet{resolution}.py")
  return paper_configs.load_config(path if arg is None else f"{path}:{arg}")


@functools.cache
def _count(model_json):
  return count_params(json.loads(model_json))


def params_of(config):
  """count_params, memoised on the model config (sweep members share their models)."""
  return _count(json.dumps(config.model.to_dict(), sort_keys=True))


def check_consistent(config):
  config_lib.validate(config)  # Builds the model (rin_from_config) and checks every field.
  assert config.model.image_size % config.model.patch_size == 0
  for field in ("image_size", "channels", "num_classes"):
    assert config.dataset[field] == config.model[field], field


@pytest.mark.parametrize("resolution", sorted(PAPER))
def test_config_encodes_tables_1_and_2(resolution):
  c = load(resolution)
  check_consistent(c)
  patch, tokens, latents, blocks, params_m, b, gamma, steps, lr, decay, dropout = PAPER[resolution]
  m = c.model
  assert m.image_size == c.dataset.image_size == resolution
  assert m.patch_size == patch and (resolution // patch) ** 2 == tokens and m.tape_dim == 512
  assert (m.latent_slots, m.latent_dim) == latents
  assert tuple(m.blocks) == blocks
  assert m.latent_heads == m.rw_heads == 16
  assert m.latent_mlp_ratio == m.tape_mlp_ratio == 4
  assert (c.diffusion.input_scale, c.diffusion.train_schedule) == (b, gamma)
  assert (c.total_steps, c.batch_size) == (steps, 1024)
  assert (c.optimizer.learning_rate, c.optimizer.decay) == (lr, decay)
  assert c.diffusion.label_dropout == dropout
  # Shared hyper-parameters (paper section 3 and the reference code).
  o = c.optimizer
  assert (o.name, o.b1, o.b2, o.weight_decay, o.warmup_steps) == ("lamb", 0.9, 0.999, 0.01, 10_000)
  assert (o.ema_decay, c.diffusion.self_cond_rate) == (0.9999, 0.9)
  assert (c.sampling.sampler, c.sampling.steps, c.diffusion.infer_schedule) == ("ddpm", 1000,
                                                                                 "cosine")
  assert (c.sampling.fid_guidance, c.sampling.guidance) == (0.0, 3.0)
  assert c.diffusion.normalize_input == "empirical"
  assert (c.dataset.name, c.dataset.num_classes, c.dataset.random_flip) == ("imagenet2012", 1000,
                                                                            True)
  params = params_of(c) / 1e6
  assert abs(params - params_m) / params_m < 0.005, (resolution, params, params_m)


def test_get_config_without_arg_equals_empty_arg():
  assert load(64).to_dict() == load(64, "").to_dict()


@pytest.mark.parametrize("resolution,variant", sorted(VARIANTS))
def test_variants(resolution, variant):
  c = load(resolution, variant)
  check_consistent(c)
  patch, blocks, params_m = VARIANTS[(resolution, variant)]
  assert (c.model.patch_size, tuple(c.model.blocks)) == (patch, blocks)
  params = params_of(c) / 1e6
  assert abs(params - params_m) / params_m < 0.005, (resolution, variant, params)


@pytest.mark.parametrize("resolution", sorted(PAPER))
def test_runlocal_keeps_structure_and_shrinks(resolution):
  full, small = load(resolution), load(resolution, "runlocal")
  check_consistent(small)
  assert len(small.model.blocks) == len(full.model.blocks)
  assert small.model.patch_size == full.model.patch_size
  assert small.model.image_size == full.model.image_size
  assert small.model.latent_mlp_ratio == full.model.latent_mlp_ratio
  assert small.model.tape_mlp_ratio == full.model.tape_mlp_ratio
  assert small.dataset.name == full.dataset.name
  assert small.batch_size <= 8 and small.total_steps <= 50 and small.sampling.steps <= 8
  assert small.checkpoint_every_steps <= small.total_steps
  assert params_of(small) < 5e6


@pytest.mark.parametrize("arg", ["runlocal,patch8", "runlocal,release", "release,runlocal"])
def test_runlocal_combines_with_variants(arg):
  c = load(64, arg)
  check_consistent(c)
  assert c.model.patch_size == 8 and c.model.tape_dim == 32


def test_key_value_overrides():
  c = load(64, "runlocal,b=0.5,steps=7,batch=16,lr=1e-4,decay=constant")
  assert (c.diffusion.input_scale, c.total_steps, c.batch_size) == (0.5, 7, 16)
  assert (c.optimizer.learning_rate, c.optimizer.decay) == (1e-4, "constant")
  assert c.model.tape_dim == 32  # runlocal still applied.
  c = load(256, "runlocal,schedule=sigmoid@0,3,0.5")
  assert c.diffusion.train_schedule == "sigmoid@0,3,0.5"
  check_consistent(c)
  assert load(128, "schedule=1-t").diffusion.train_schedule == "linear"
  assert load(512, "schedule=linear").diffusion.train_schedule == "linear"


@pytest.mark.parametrize("resolution,arg,needle", [
    (64, "bogus", "'bogus'"),
    (64, "runlocal,turbo", "'turbo'"),
    (256, "patch8", "'patch8'"),  # Already patch 8 from 256 up.
    (128, "release", "'release'"),  # The released config is ImageNet-64 only.
    (64, "b=abc", "b='abc'"),
    (64, "steps=1.5", "steps='1.5'"),
    (64, "width=3", "'width'"),
    (64, "runlocal,runlocal", "twice"),
    (64, "b=0.5,b=0.6", "twice"),
    (64, "patch8,release", "exclude"),
])
def test_bad_args_raise_value_error_naming_the_token(resolution, arg, needle):
  with pytest.raises(ValueError) as error:
    load(resolution, arg)
  message = str(error.value)
  assert needle in message
  if "unknown" in message:
    assert "allowed: runlocal" in message


def test_bad_schedule_is_caught_by_validate():
  c = load(64, "schedule=sigmoid@3,0,1")
  with pytest.raises(ValueError, match="train_schedule"):
    config_lib.validate(c)


def _sweep(name):
  path = os.path.join(REPO, "configs", "sweeps", name)
  spec = importlib.util.spec_from_file_location(name[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_sweep()


def _apply(member):
  c = paper_configs.load_config(os.path.join(REPO, member["config"]))
  for key, value in member.items():
    if "." in key:
      section, field = key.split(".")
      assert field in c[section], key
      c[section][field] = value
  return c


def test_table3_sweep():
  sweep = _sweep("table3_schedules.py")
  assert len(sweep) == 36
  assert len({m["name"] for m in sweep}) == 36
  assert {m["config"] for m in sweep} == {f"configs/imagenet{r}.py" for r in (64, 128, 256)}
  assert {m["diffusion.input_scale"] for m in sweep} == {1.0}
  schedules = {m["diffusion.train_schedule"] for m in sweep}
  assert schedules == {
      "linear", "cosine@0,1,1", "cosine@0.2,1,1", "cosine@0.2,1,2", "cosine@0.2,1,3",
      "sigmoid@-3,3,0.9", "sigmoid@-3,3,1.1", "sigmoid@0,3,0.3", "sigmoid@0,3,0.5",
      "sigmoid@0,3,0.7", "sigmoid@0,3,0.9", "sigmoid@0,3,1.1"}
  fid = {(m["config"], m["diffusion.train_schedule"]): m["paper_fid"] for m in sweep}
  assert fid[("configs/imagenet64.py", "linear")] == 2.04
  assert fid[("configs/imagenet128.py", "sigmoid@0,3,0.7")] == 3.91
  assert fid[("configs/imagenet256.py", "sigmoid@0,3,0.5")] == 4.28
  assert fid[("configs/imagenet256.py", "cosine@0,1,1")] == 21.6


def test_table4_sweep():
  sweep = _sweep("table4_input_scale.py")
  assert len(sweep) == 48
  assert len({m["name"] for m in sweep}) == 48
  assert {m["diffusion.input_scale"] for m in sweep} == {0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0}
  assert {m["diffusion.train_schedule"] for m in sweep} == {"cosine@0.2,1,1", "linear"}
  assert {m["config"] for m in sweep} == {f"configs/imagenet{r}.py" for r in (64, 128, 256)}
  cells = {(m["config"], m["diffusion.train_schedule"], m["diffusion.input_scale"])
           for m in sweep}
  assert len(cells) == 48
  fid = {(m["config"], m["diffusion.train_schedule"], m["diffusion.input_scale"]): m["paper_fid"]
         for m in sweep}
  assert fid[("configs/imagenet256.py", "linear", 0.4)] == 3.52
  assert fid[("configs/imagenet128.py", "linear", 0.6)] == 3.5
  assert fid[("configs/imagenet64.py", "cosine@0.2,1,1", 0.3)] == 5.1
  assert fid[("configs/imagenet256.py", "cosine@0.2,1,1", 1.0)] == 12.3


@pytest.mark.parametrize("name", ["table3_schedules.py", "table4_input_scale.py"])
def test_every_sweep_member_builds_and_validates(name):
  for member in _sweep(name):
    c = _apply(member)
    check_consistent(c)
    assert c.diffusion.input_scale == member["diffusion.input_scale"]
    assert c.diffusion.train_schedule == member["diffusion.train_schedule"]
    assert params_of(c) > 2e8  # The Table-1 model, built abstractly (memoised per model).


def test_paper_tables_table1_rows_come_from_the_model():
  rows = paper_tables.table1(
      count=lambda model: _count(json.dumps(model.to_dict(), sort_keys=True)))
  header, body = rows[0], rows[1:]
  assert len(body) == 2 * (len(PAPER) + len(VARIANTS))  # A config row and a paper row each.
  config_rows = body[0::2]
  params = header.index("params (M)")
  matches = header.index("matches paper")
  for row, resolution in zip(config_rows, sorted(PAPER)):
    assert row[0] == f"imagenet{resolution}"
    assert row[matches] == "yes"
    assert abs(float(row[params]) - PAPER[resolution][4]) / PAPER[resolution][4] < 0.005
  assert config_rows[0][params] == "214.43"  # Exact count, not the paper's rounded "214".


def test_paper_tables_table2_and_cli(capsys, tmp_path):
  rows = paper_tables.table2()
  assert all(r[-1] == "yes" for r in rows[1::2])
  paper_tables.main(["--tables=2"])
  out = capsys.readouterr().out
  assert "Cosine (first 70%)" in out and "cosine@0.7" in out and "910K" in out
  with pytest.raises(SystemExit):
    paper_tables.main(["--tables=6"])
  # Table 5 (FID per resolution): ours read from WORKDIR_ROOT/in<R>/metrics.jsonl.
  run = tmp_path / "in256"
  run.mkdir()
  (run / "metrics.jsonl").write_text('{"step": 3, "mode": "eval", "fid": 7.125}\n')
  paper_tables.main(["--tables=5", f"--workdir_root={tmp_path}"])
  rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| imagenet")]
  assert rows[2] == "| imagenet256 | 3.52 | 186.2 | 7.12 |" and rows[0].endswith("| - |")


def test_flop_closed_form_agrees_with_xla():
  c = load(64, "release")  # The smallest paper-sized model: compiles in seconds on CPU.
  xla = paper_tables.forward_flops_xla(c.model)
  closed = paper_tables.forward_flops_analytic(c.model)
  assert 0.95 < closed / xla <= 1.0, (closed, xla)


def test_read_fid(tmp_path):
  assert paper_tables.read_fid(str(tmp_path)) is None
  (tmp_path / "metrics.jsonl").write_text(
      '{"step": 1, "loss": 0.5}\n{"step": 2, "fid": 9.5}\n{"step": 3, "fid": 4.25}\n')
  assert paper_tables.read_fid(str(tmp_path)) == 4.25


def test_validate_starts_no_jax_backend():
  """main validates before jax.distributed.initialize, which fails once any jax op has run."""
  import subprocess  # noqa: PLC0415
  import sys  # noqa: PLC0415

  code = (
      "from jax._src import xla_bridge\n"
      "from rin_diffusion import config_lib, paper_configs\n"
      "for path in ('configs/fashion_mnist.py', 'configs/imagenet64.py'):\n"
      "  config_lib.validate(paper_configs.load_config(path))\n"
      "assert not xla_bridge.backends_are_initialized(), 'validate() started a jax backend'\n")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
