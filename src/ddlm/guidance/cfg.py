"""Classifier-free guidance (Ho & Salimans 2022; DESIGN.md section 5): one network trained with labels,
each record's label replaced by the null label with probability p_drop, sampled given a label y with
strength gamma.

At every call the network runs twice on the same input, given y and given the null label, and the
objective mixes the two raw outputs (`Objective.mix_guided`): per position,

    log p_gamma(x0_i | x_t, y) = gamma log p(x0_i | x_t, y) + (1 - gamma) log p(x0_i | x_t, null) + const,

renormalised over the vocabulary (MDLM and D3PM's clean-token predictions, SEDD absorbing's normalised
scores with the total unmasking rate left to the schedule, AR's next-token logits); the uniform
process mixes the log rates. gamma = 0 is the unconditional model, 1 the conditional one (each then
costs one pass), > 1 sharper. `Guided` has the network's forward signature and is as time-independent
as the network, so every sampler, its cache included, runs unchanged; a key/value cache (AR decoding,
a bd3lm prefix) keeps the two passes' keys and values apart in the same per-layer dicts.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterator, MutableMapping

import torch

from ..errors import UserError
from ..networks import Labelled, Wrapper
from ..run import LoadedRun

NULL_PREFIX = "null."  # the unconditional pass's keys in a shared key/value cache dict


class CacheView(MutableMapping):
    """The unconditional pass's view of one layer's key/value cache dict: its own "k" and "v" stored as
    "null.k" and "null.v" beside the conditional pass's; "frozen" is shared."""

    def __init__(self, cache: dict):
        self.cache = cache

    def _key(self, key: str) -> str:
        return key if key == "frozen" else NULL_PREFIX + key

    def __getitem__(self, key):
        return self.cache[self._key(key)]

    def __setitem__(self, key, value):
        self.cache[self._key(key)] = value

    def __delitem__(self, key):
        del self.cache[self._key(key)]

    def __iter__(self) -> Iterator[str]:
        return (k[len(NULL_PREFIX) :] if k.startswith(NULL_PREFIX) else k for k in self.cache if self._mine(k))

    def _mine(self, key: str) -> bool:
        return key == "frozen" or key.startswith(NULL_PREFIX)

    def __len__(self) -> int:
        return sum(1 for k in self.cache if self._mine(k))


class Guided(Wrapper):
    """net(x, ...) -> mix(net(x, ..., labels=y), net(x, ..., labels=null), gamma), with `mix` the
    objective's rule (`Objective.mix_guided`). At gamma 1 (or 0) only the conditional (unconditional)
    pass runs, mixed with itself, which the rule leaves as it is up to its normalisation."""

    def __init__(self, net, mix: Callable, label: int, null: int, gamma: float):
        super().__init__(net)
        self.mix, self.label, self.null, self.gamma = mix, label, null, float(gamma)

    def _pass(self, x, label: int, kv_caches, args, kwargs) -> torch.Tensor:
        labels = torch.full((x.shape[0],), label, dtype=torch.long, device=x.device)
        if kv_caches is not None:
            kwargs = {**kwargs, "kv_caches": kv_caches if label == self.label else [CacheView(c) for c in kv_caches]}
        return Labelled(self.net, labels)(x, *args, **kwargs).float()

    def forward(self, x: torch.Tensor, *args, kv_caches: list[dict] | None = None, **kwargs) -> torch.Tensor:
        if self.gamma == 1.0:
            out = self._pass(x, self.label, kv_caches, args, kwargs)
            return self.mix(out, out, 1.0)
        unconditional = self._pass(x, self.null, kv_caches, args, kwargs)
        if self.gamma == 0.0:
            return self.mix(unconditional, unconditional, 0.0)
        conditional = self._pass(x, self.label, kv_caches, args, kwargs)
        return self.mix(conditional, unconditional, self.gamma)


def label_index(loaded: LoadedRun, label: str) -> int:
    """The index of `label` in the run's label vocabulary; a UserError naming the known labels."""
    names = loaded.config.label_names
    if not names:
        raise UserError(f"--condition: {loaded.run_dir} was trained without labels (ddlm train --labels)")
    if label not in names:
        raise UserError(f"--condition {label}: not a label of {loaded.run_dir}; its labels are {', '.join(names)}")
    return names.index(label)


def guided_network(loaded: LoadedRun, condition: str | None, gamma: float | None = None):
    """The network a sampler should call: the run's own when no label is asked for, else `Guided` with
    the label `condition` and strength gamma (1 when not given: the conditional model)."""
    if condition is None:
        if gamma is not None:
            raise UserError("--cfg needs --condition LABEL (the label to guide towards)")
        return loaded.net
    index = label_index(loaded, condition)
    gamma = 1.0 if gamma is None else gamma
    return Guided(loaded.net, loaded.objective.mix_guided, index, len(loaded.config.label_names), gamma)


def guidance_strength(text: str) -> float:
    """An argparse type: gamma, a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number >= 0")
    return value


def add_cfg_arguments(parser) -> None:
    """`--condition LABEL` and `--cfg GAMMA` for a command that samples."""
    parser.add_argument("--condition", metavar="LABEL", help="sample given this label (a run trained with --labels)")
    parser.add_argument(
        "--cfg",
        type=guidance_strength,
        metavar="GAMMA",
        help="classifier-free guidance strength with --condition: 0 unconditional, 1 conditional (default), "
        "> 1 sharper",
    )
