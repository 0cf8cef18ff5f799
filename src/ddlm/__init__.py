"""ddlm: discrete diffusion language models on one backbone."""

__version__ = "0.1.0"
