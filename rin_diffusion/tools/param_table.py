"""Parameter counts of the paper's RIN architectures, built abstractly (no parameter memory).

  python -m rin_diffusion.tools.param_table
  python -m rin_diffusion.tools.param_table --cascade    # CDM's U-Net stages and pipelines

prints a markdown table: Table 1 of the noise-scheduling paper (Chen 2023), our count, the paper's
count and the count from the closed form in the spec (rin-reference.md section 3.3), then the
CIFAR-10 and ImageNet-64 as-released architectures of the official configs (spec section 2.8).
`TABLE1` and `EXTRA_ROWS` are plain data for configs and other tools to reuse.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax.core import meta

from rin_diffusion import model as model_lib
from rin_diffusion import networks, paper_configs

# Fields shared by every Table-1 architecture (16 heads, r = r_t = 4, classes on the latents).
# The spec's closed-form count of each Table-1 architecture (spec-rin 3.3), in M.
SPEC_PARAMS_M = {64: 214.43, 128: 214.83, 256: 319.03, 512: 320.61, 768: 408.28, 1024: 411.95}


def _table1_row(resolution: int) -> dict[str, Any]:
  """A Table-1 row (typed once, in paper_configs.TABLE1) as RIN fields plus the reference counts."""
  paper = paper_configs.TABLE1[resolution]
  (_, tape_dim), (latent_slots, latent_dim) = paper["tokens"], paper["latents"]
  return dict(
      name=f"{resolution}x{resolution}", image_size=resolution, channels=3, num_classes=1000,
      patch_size=paper["patch"], tape_dim=tape_dim, latent_slots=latent_slots,
      latent_dim=latent_dim, blocks=tuple(paper["blocks"]), latent_heads=paper["heads"],
      rw_heads=paper["heads"], latent_mlp_ratio=4, tape_mlp_ratio=4,
      paper_params_m=paper["params_m"], spec_params_m=SPEC_PARAMS_M[resolution],
      input_scale=paper["input_scale"],
      train_schedule="linear" if paper["schedule"] == "1-t" else paper["schedule"])


# Table 1 of the noise-scheduling paper: tokens N x d = (image/patch)^2 x 512; latents L x 768.
TABLE1: list[dict[str, Any]] = [_table1_row(resolution) for resolution in sorted(
    paper_configs.TABLE1)]

# The official pix2seq configs (spec section 2.8). The RIN paper's "31 M" for CIFAR-10 is
# unverified (spec [P]); the released ImageNet-64 config has no published count.
EXTRA_ROWS: list[dict[str, Any]] = [
    dict(name="cifar10 (pix2seq config)", image_size=32, channels=3, num_classes=10, patch_size=2,
         tape_dim=256, latent_slots=128, latent_dim=512, blocks=(2, 2, 2), latent_mlp_ratio=4,
         tape_mlp_ratio=2, latent_heads=16, rw_heads=8, drop_units=0.1, drop_path=0.1,
         paper_params_m=31, spec_params_m=30.95),
    dict(name="imagenet64 as released", image_size=64, channels=3, num_classes=1000, patch_size=8,
         tape_dim=512, latent_slots=128, latent_dim=768, blocks=(4, 4, 4, 4), latent_mlp_ratio=4,
         tape_mlp_ratio=4, latent_heads=16, rw_heads=16, paper_params_m=None,
         spec_params_m=157.78),
]

_ROW_ONLY_KEYS = ("name", "paper_params_m", "spec_params_m", "input_scale", "train_schedule")


def model_config_for(row: Mapping[str, Any]) -> dict[str, Any]:
  """The config.model fields of a table row (defaults from config_lib.base_config)."""
  from rin_diffusion import config_lib  # Local: keeps this module importable on its own.

  fields = dict(config_lib.base_config().model)
  fields.update({k: v for k, v in row.items() if k not in _ROW_ONLY_KEYS})
  return fields


def count_params(model_config: Mapping[str, Any]) -> int:
  """Number of parameters of `rin_from_config(model_config)`, via jax.eval_shape (no memory)."""
  return _count(model_lib.rin_from_config(model_config))


def count_config_params(config: ml_collections.ConfigDict) -> int:
  """Number of parameters of a run config's network (RIN or U-Net), via jax.eval_shape."""
  return _count(networks.from_config(config))


def _count(net) -> int:
  size = net.image_size
  in_channels = net.channels + net.extra_in_channels
  args = [jax.ShapeDtypeStruct((1, size, size, in_channels), jnp.float32),
          jax.ShapeDtypeStruct((1,), jnp.float32)]
  kwargs = {}
  if net.num_classes > 0:
    kwargs["class_onehot"] = jax.ShapeDtypeStruct((1, net.num_classes), jnp.float32)
  if net.num_extra_tokens > 0:
    kwargs["extra_gammas"] = jax.ShapeDtypeStruct((1, net.num_extra_tokens), jnp.float32)
  init = functools.partial(net.init, train=False)
  variables = jax.eval_shape(init, jax.random.key(0), *args, **kwargs)
  leaves = jax.tree_util.tree_leaves(meta.unbox(variables["params"]))
  return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in leaves))


def _fmt(value, spec: str) -> str:
  return "n/a" if value is None else format(value, spec)


def _table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  lines = ["| config | ours (M) | paper (M) | spec arithmetic (M) | rel. diff vs paper "
           "| diff vs spec (M) | ours (exact) |",
           "|---|---|---|---|---|---|---|"]
  for row in rows:
    exact = count_params(model_config_for(row))
    ours = exact / 1e6
    paper, spec = row["paper_params_m"], row["spec_params_m"]
    rel = None if paper is None else (ours - paper) / paper * 100
    lines.append(f"| {row['name']} | {ours:.2f} | {_fmt(paper, 'd')} | {spec:.2f} "
                 f"| {_fmt(rel, '+.2f')}{'' if rel is None else ' %'} | {ours - spec:+.3f} | {exact:,} |")
  return lines


def render() -> str:
  lines = ["Table 1 (Chen 2023, noise scheduling): RIN parameter counts", ""]
  lines += _table(TABLE1)
  lines += ["", "Official pix2seq configs (spec section 2.8; the CIFAR-10 paper count is unverified)",
            ""]
  lines += _table(EXTRA_ROWS)
  return "\n".join(lines)


# The noise-scheduling paper's Table 5: CDM's ImageNet pipelines, in M parameters.
CDM_TABLE5_M = {128: 1058, 256: 1953}


def cascade_counts() -> dict[str, int]:
  """Exact parameter count of every CDM U-Net stage config (configs/cdm/unet_*.py)."""
  from rin_diffusion.cascade import stage_configs  # noqa: PLC0415 -- only for --cascade.

  return {f"{dataset} {name}": count_config_params(stage_configs.unet_stage(dataset, name))
          for dataset, name in stage_configs.UNET_STAGES}


def render_cascade() -> str:
  from rin_diffusion.cascade import stage_configs  # noqa: PLC0415

  counts = cascade_counts()
  lines = ["CDM U-Net stages (Ho et al. 2021, Appendix B; configs/cdm/unet_*.py)", "",
           "| stage | config | U-Net (ch, mult, blocks, attn) | params (M) | exact |",
           "|---|---|---|---|---|"]
  for (dataset, name), row in stage_configs.UNET_STAGES.items():
    unet = row["unet"]
    shape = (f"{unet['base_channels']}, {','.join(map(str, unet['channel_mult']))}, "
             f"{unet['num_res_blocks']}, {','.join(map(str, unet['attention_resolutions']))}")
    exact = counts[f"{dataset} {name}"]
    lines.append(f"| {dataset} {name} | {stage_configs.UNET_STAGE_FILES[(dataset, name)]} "
                 f"| {shape} | {exact / 1e6:.2f} | {exact:,} |")
  lines += ["", "ImageNet pipelines vs the noise-scheduling paper's Table 5", "",
            "| pipeline | stages | ours (M) | Table 5 (M) | rel. diff |", "|---|---|---|---|---|"]
  for resolution, paper in CDM_TABLE5_M.items():
    names = stage_configs.PIPELINES[("imagenet", resolution)]
    total = sum(counts[f"imagenet {name}"] for name in names)
    lines.append(f"| {resolution}x{resolution} | {' + '.join(names)} | {total / 1e6:.1f} "
                 f"| {paper} | {(total / 1e6 - paper) / paper * 100:+.1f} % |")
  # What the two totals would imply for the last stage, given Appendix B's first two stages.
  shared = (counts["imagenet base32"] + counts["imagenet sr64"]) / 1e6
  sr128, sr256 = counts["imagenet sr128"] / 1e6, counts["imagenet sr256"] / 1e6
  lines += [
      "",
      f"* base32 + sr64 alone have {shared:.1f} M parameters, more than Table 5's whole 128 "
      f"pipeline ({CDM_TABLE5_M[128]} M): no 64 -> 128 stage fits that total, so it cannot follow "
      "from Appendix B.",
      f"* Table 5's totals differ by {CDM_TABLE5_M[256] - CDM_TABLE5_M[128]} M; Appendix B's "
      f"64 -> 256 and 64 -> 128 stages differ by {sr256 - sr128:.1f} M (one more level, 512 "
      "channels at 256x256). The 256 total alone is within 10 % of ours: it would imply a "
      f"{CDM_TABLE5_M[256] - shared:.0f} M 64 -> 256 stage against our {sr256:.0f} M.",
  ]
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  if argv == ["--cascade"]:
    print(render_cascade())
    return
  if argv:
    raise SystemExit(f"param_table takes no arguments or --cascade, got {list(argv)}")
  print(render())


if __name__ == "__main__":
  main()
