"""rin_diffusion: Recurrent Interface Networks with the noise-scheduling recipe, in JAX/Flax."""

import pathlib
import re

from setuptools import find_packages, setup


def read_version() -> str:
  """rin_diffusion.__version__, the one place the version is written (read, not imported: the
  package's dependencies need not be installed yet)."""
  init = pathlib.Path(__file__).parent / "rin_diffusion" / "__init__.py"
  return re.search(r'^__version__ = "([^"]+)"$', init.read_text(), re.M).group(1)


# Pins tested on Python 3.11 (CI). The ranges stay wide enough for TPU images with newer jax.
CORE = [
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "tensorflow-datasets>=4.9.10",
    "ml-collections>=1.1.0",
    "clu>=0.0.12",
    "chex>=0.1.92",
    "numpy>=2.0",
    # tfds imports importlib_resources unconditionally but only declares it for Python < 3.9.
    "importlib_resources>=6.0",
    "pillow>=10.0",
    "absl-py>=2.0",
    # config.dataset.loader='grain': batches built in worker processes (no GIL shared with the
    # training loop). Imported only by that loader.
    "grain>=0.2.18",
]

# clu's metric writers and periodic actions, and tfds' tf.data paths, need TensorFlow.
TF = ["tensorflow-cpu>=2.21.0; platform_machine == 'x86_64'", "tensorboard>=2.21.0"]

# Exactly what CI installs on Python 3.11 (the newest jax and flax that still support 3.11; also
# pinned in launch/constraints.txt).
CI_PINS = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorflow-datasets==4.9.10",
    "ml-collections==1.1.0",
    "clu==0.0.12",
    "chex==0.1.92",
    "numpy==2.4.6",
    "importlib_resources==7.1.0",
    "pillow==13.0.0",
    "tensorflow-cpu==2.21.0",
    "tensorboard==2.21.0",
    "grain==0.2.18",
]

TEST = ["pytest>=8.0", "ruff>=0.6"]

setup(
    name="rin_diffusion",
    version=read_version(),
    description="RIN diffusion models with the noise-scheduling recipe, from a laptop CPU to TPU pods.",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["rin_diffusion", "rin_diffusion.*"]),
    install_requires=CORE,
    extras_require={
        "tf": TF,
        "test": TEST,
        "ci": CI_PINS + TEST,
        "tpu": ["jax[tpu]"],
    },
)
