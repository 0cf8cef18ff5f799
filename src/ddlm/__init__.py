"""ddlm: discrete diffusion language models on one backbone.

`ddlm.load(RUN)` returns a trained run as a model to `sample`, `infill` and `score` (see `ddlm.api`);
it is imported on first use, so `import ddlm` does not load torch.
"""

__version__ = "0.1.0"
__all__ = ["Model", "Samples", "load"]


def __getattr__(name: str):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'ddlm' has no attribute {name!r}")
