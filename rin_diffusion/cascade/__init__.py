"""Cascaded Diffusion Models (Ho et al. 2021): base stage plus super-resolution stages."""
