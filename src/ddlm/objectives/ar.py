"""The autoregressive baseline: the same transformer with causal attention, and its left-to-right sampler."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..sampling import SampleResult, SampleSpec, draw
from .base import ANIMATION_REFUSAL, OBJECTIVES, Objective


@OBJECTIVES.register
class AutoRegressive(Objective):
    """The AR baseline: the same transformer with causal attention, exact NLL by next-token cross-entropy.

    The input is shifted right behind a start token (id V), so every one of the L positions is
    predicted and the NLL covers exactly the tokens a diffusion bound covers.
    """

    name = "ar"
    bound = "exact"
    causal = True
    models_length = False  # the end marker is one of its tokens: it stops there

    @classmethod
    def refuse(cls, config):
        noisy = config.schedule not in (None, cls.schedule_config(config.process)) or config.time_conditioning
        if config.process != "absorbing" or noisy:
            return "--objective ar takes no --process, --schedule or --time-conditioning (it has no noise)"
        return None

    @property
    def net_vocab(self) -> tuple[int, int]:
        return self.vocab_size + 1, self.vocab_size

    @property
    def start_id(self) -> int:
        return self.vocab_size

    def loss(self, net, x0, t=None, generator=None, t_min=1e-3):
        start = torch.full_like(x0[:, :1], self.start_id)
        logits = net(torch.cat([start, x0[:, :-1]], dim=1)).float()
        return F.cross_entropy(logits.transpose(1, 2), x0, reduction="none").sum(-1)

    def sample(self, net, batch, length, spec, *, clamp=None, clamp_values=None, generator=None, device="cpu"):
        return generate_ar(
            net, self, batch, length, spec, clamp=clamp, clamp_values=clamp_values, generator=generator, device=device
        )

    def sampling_refusal(self, spec, animate=False):
        if spec.order is not None:
            return "--order and --remask need a masked (absorbing) diffusion run"
        return ANIMATION_REFUSAL if animate else None


@torch.inference_mode()
def generate_ar(
    net,
    objective: AutoRegressive,
    batch: int,
    length: int,
    spec: SampleSpec,
    *,
    clamp: torch.Tensor | None = None,
    clamp_values: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> SampleResult:
    """Left-to-right sampling with a key/value cache (one new token per network call; `spec.use_cache`).

    A clamped position is forced to its value; the model conditions on it only from then on, so an
    AR model is conditioned by a prefix, not by later positions. `spec.shape` restricts the tokens
    (`allowed`) and applies the temperature and nucleus. Where records end (`spec.end_id`), sampling
    stops once every sequence has drawn its end marker and fills the rest with `spec.pad_id`, what a
    record holds after its end: the same seed gives the same records up to their end markers, in
    fewer calls.
    """
    x = torch.empty(batch, length, dtype=torch.long, device=device)
    inputs = torch.full((batch, 1), objective.start_id, dtype=torch.long, device=device)
    caches = [{} for _ in net.layers] if spec.use_cache else None
    ended = torch.zeros(batch, dtype=torch.bool, device=device)
    for i in range(length):
        if spec.end_id is not None and bool(ended.all()) and (clamp is None or not bool(clamp[:, i:].any())):
            x[:, i:] = spec.pad_id
            return SampleResult(tokens=x, nfe=torch.full((batch,), i, device=device))
        if spec.use_cache:
            logits = net(inputs[:, -1:], kv_caches=caches, start=i)[:, -1]
        else:
            logits = net(inputs)[:, -1]
        token = draw(spec.shape(torch.softmax(logits.float(), dim=-1)), generator)
        if clamp is not None:
            token = torch.where(clamp[:, i], clamp_values[:, i], token)
        x[:, i] = token
        if spec.end_id is not None:
            ended |= token == spec.end_id
        inputs = torch.cat([inputs, token[:, None]], dim=1)
    return SampleResult(tokens=x, nfe=torch.full((batch,), length, device=device))
