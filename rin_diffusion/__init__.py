"""rin_diffusion: Recurrent Interface Networks trained with the noise-scheduling recipe."""

__version__ = "0.1.0"
