"""Command-line tools of rin_diffusion (run as `python -m rin_diffusion.tools.<name>`)."""
