"""Table 3 of Chen 2023: FID for 12 training noise schedules x 64/128/256, input scale fixed to 1.

  python -m rin_diffusion.tools.sweep configs/sweeps/table3_schedules.py \
      --workdir_root=gs://BUCKET/table3 --launcher=queued_resources --dry-run

36 members. Each trains configs/imagenet<R>.py (Tables 1-2 settings at that resolution) with
diffusion.train_schedule set to the row's gamma(t) and diffusion.input_scale = 1.0 (which overrides
Table 1's b = 0.6 / 0.5 at 128 / 256). 'paper_fid' is the paper's FID for the cell, so a results
table can be printed next to it: `python -m rin_diffusion.tools.paper_tables --tables=3
--workdir_root=gs://BUCKET/table3`.

The paper's "cosine (s=0, e=1, tau=1; i.e., cosine)" row is Algorithm 1's 'cosine@0,1,1'. The
reference's offset 'cosine' (the inference schedule) differs from it only near t = 0 and t = 1.
"""

from rin_diffusion import paper_configs


def member_name(resolution: int, schedule: str) -> str:
  """A workdir / TPU-name friendly name: lowercase letters, digits and '-'."""
  slug = (schedule.replace("@", "-").replace(",", "-").replace(".", "p").replace("--", "-m"))
  return f"t3-in{resolution}-{slug}"


def get_sweep() -> list[dict]:
  sweep = []
  for resolution in paper_configs.TABLE3_RESOLUTIONS:
    for _, schedule, fids in paper_configs.TABLE3:
      sweep.append({
          "name": member_name(resolution, schedule),
          "config": paper_configs.config_path(resolution),
          "diffusion.train_schedule": schedule,
          "diffusion.input_scale": 1.0,
          "paper_fid": fids[resolution],
      })
  return sweep
