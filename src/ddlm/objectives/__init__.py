"""Training objectives, one module each, registered by name in `OBJECTIVES` (see base.py).

A new objective is a class in a new module of this package, decorated with `@OBJECTIVES.register`,
and one import line below so that the registry knows it.
"""

from .ar import AutoRegressive
from .base import OBJECTIVES, DiffusionObjective, Objective, log_expm1, stratified_times
from .bd3lm import BlockDiffusion
from .d3pm import D3PM
from .mdlm import MDLM
from .option import Option
from .sedd import ScoreEntropy

__all__ = [
    "OBJECTIVES",
    "AutoRegressive",
    "BlockDiffusion",
    "D3PM",
    "DiffusionObjective",
    "MDLM",
    "Objective",
    "Option",
    "ScoreEntropy",
    "log_expm1",
    "stratified_times",
]
