"""A small synthetic stand-in for TFDS `imagenet2012`, generated locally: the ImageNet smoke path.

`configs/imagenet<R>.py:runlocal,synthetic` trains on it, so the ImageNet configs run end to end
on a machine without ImageNet (whose files must be downloaded by hand). The features are
imagenet2012's: 'image' a JPEG-encoded uint8 HxWx3 `tfds.features.Image` of varied, mostly
non-square sizes (some smaller than 64 pixels, some larger than 256), 'label' a 1000-class
`ClassLabel` (int64) and 'file_name' text; splits 'train' and 'validation'. It is written in
array_record, so the real pipeline's random access, JPEG decoding, centre crop and resize all run
on it. The pixels are smooth random colour fields (cheap to encode, no licence); nothing about
them is ImageNet's, so losses and samples mean nothing beyond "the code runs".
"""

from __future__ import annotations

import io

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

NAME = "synthetic_imagenet2012"
NUM_CLASSES = 1000
SPLIT_SIZES = {"train": 128, "validation": 32}
MIN_SIDE, MAX_SIDE = 40, 320  # Pixels; imagenet64's images are then both up- and downscaled.
_SPLIT_SEEDS = {"train": 0, "validation": 1}


def jpeg_bytes(image: np.ndarray) -> bytes:
  """JPEG-encoded by PIL, as ImageNet's files are JPEGs (TFDS would encode arrays with TF)."""
  buffer = io.BytesIO()
  PIL.Image.fromarray(image).save(buffer, format="JPEG", quality=90)
  return buffer.getvalue()


def synthetic_image(seed: int, index: int) -> np.ndarray:
  """uint8 (H, W, 3): a random 4x4 colour grid, bicubic-upsampled to a random size, plus noise."""
  rng = np.random.default_rng([seed, index])
  height, width = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))
  grid = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
  smooth = np.asarray(PIL.Image.fromarray(grid).resize((width, height), PIL.Image.Resampling.BICUBIC))
  noise = rng.integers(-8, 9, size=smooth.shape)
  return np.clip(smooth.astype(np.int16) + noise, 0, 255).astype(np.uint8)


class SyntheticImagenet2012(tfds.core.GeneratorBasedBuilder):
  """imagenet2012's features and splits, a few synthetic examples each. Never downloads."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Synthetic stand-in for imagenet2012 (smoke runs)."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in SPLIT_SIZES}

  def _generate_examples(self, split: str):
    seed = _SPLIT_SEEDS[split]
    labels = np.random.default_rng([seed, 1 << 20]).integers(0, NUM_CLASSES, SPLIT_SIZES[split])
    for i in range(SPLIT_SIZES[split]):
      file_name = f"synthetic_{split}_{i:05d}.JPEG"
      yield file_name, {"image": jpeg_bytes(synthetic_image(seed, i)), "label": int(labels[i]),
                        "file_name": file_name}


def prepare(data_dir: str = "") -> SyntheticImagenet2012:
  """The builder for `data_dir` ('' = TFDS default), generated there in array_record on first use."""
  builder = SyntheticImagenet2012(data_dir=data_dir or None)  # Reads the format of a prepared copy.
  if not builder.is_prepared():
    builder = SyntheticImagenet2012(data_dir=data_dir or None, file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
  return builder
