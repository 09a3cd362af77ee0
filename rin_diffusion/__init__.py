"""rin_diffusion: Recurrent Interface Networks trained with the noise-scheduling recipe."""

# The one place the version is written: setup.py reads it; CHANGELOG.md and CITATION.cff name it
# too (tests/test_version.py checks that they agree).
__version__ = "0.1.0"
