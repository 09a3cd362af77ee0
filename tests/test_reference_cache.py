"""Reference statistics are recomputed when the code or a setting behind them changes."""

from __future__ import annotations

import numpy as np

from rin_diffusion.evaluation import inception as inception_lib
from rin_diffusion.evaluation import reference


class CountingInception:
  """pool3 = the first 4 pixels; counts the images it has seen."""
  source, has_logits, weights_sha1 = "stand-in", False, "0" * 40

  def __init__(self):
    self.seen = 0

  def compute(self, images, batch_size=32):
    del batch_size
    images = np.stack(images)
    self.seen += len(images)
    return {"pool3": images.reshape(len(images), -1)[:, :4].astype(np.float32)}


def test_cache_is_keyed_by_code_versions_and_pad_to(tmp_path, monkeypatch):
  path = str(tmp_path / "real.npz")
  np.savez(path, images=np.random.default_rng(0).integers(0, 256, (6, 8, 8, 1), np.uint8))
  inception = CountingInception()

  def statistics(**kwargs):
    return reference.reference_statistics(path, image_size=None, num_images=6,
                                          inception=inception, cache_dir=str(tmp_path / "c"),
                                          **kwargs)

  statistics()
  statistics()
  assert inception.seen == 6  # The second call read the cache.
  statistics(pad_to=40)
  assert inception.seen == 12
  versions = reference.code_versions()
  assert set(versions) == {"preprocessing", "inception"}
  assert versions["inception"] == inception_lib.code_version()
  monkeypatch.setattr(reference, "code_versions",
                      lambda: {**versions, "preprocessing": "changed"})
  statistics()
  assert inception.seen == 18
