"""Table 4 of Chen 2023: FID for b = 0.3 ... 1.0 x gamma in {cosine@0.2,1,1, 1-t} x 64/128/256.

  python -m rin_diffusion.tools.sweep configs/sweeps/table4_input_scale.py \
      --workdir_root=gs://BUCKET/table4 --launcher=slurm --dry-run

48 members. Each trains configs/imagenet<R>.py (Tables 1-2 settings at that resolution) with
diffusion.train_schedule and diffusion.input_scale set to the cell's values; x_t is normalised by
its empirical std (the configs' normalize_input='empirical'). 'paper_fid' is the paper's FID for the
cell. The b = 1.0 members repeat Table 3 cells (same settings, same paper FIDs).
"""

from rin_diffusion import paper_configs


def member_name(resolution: int, schedule: str, input_scale: float) -> str:
  """A workdir / TPU-name friendly name: lowercase letters, digits and '-'."""
  slug = "cos0p2" if schedule.startswith("cosine") else "lin"
  return f"t4-in{resolution}-{slug}-b{input_scale:.1f}".replace(".", "p")


def get_sweep() -> list[dict]:
  sweep = []
  for resolution in paper_configs.TABLE4_RESOLUTIONS:
    for s, schedule in enumerate(paper_configs.TABLE4_SCHEDULES):
      for input_scale, cells in paper_configs.TABLE4.items():
        sweep.append({
            "name": member_name(resolution, schedule, input_scale),
            "config": paper_configs.config_path(resolution),
            "diffusion.train_schedule": schedule,
            "diffusion.input_scale": input_scale,
            "paper_fid": cells[resolution][s],
        })
  return sweep
