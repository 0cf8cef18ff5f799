"""A plain PyTorch yardstick for `ddlm bench`: the same shape of network, trained and sampled the textbook way.

`ReferenceNet` is `nn.TransformerEncoder` (pre-LayerNorm, GELU, batch first) between a token embedding
with sinusoidal positions and a linear head: the seed's design, written here for the project so that
`ddlm bench` can time it beside ddlm's own step in the same run, at the same precision. Training is a
masked-token cross-entropy (MDLM's loss without its 1/t weight: t ~ U(0, 1) per sequence, each position
masked with probability t, cross-entropy of the clean token at the masked positions) with an
`torch.optim.AdamW` step at its defaults, and `loss.item()` once a step as a training loop that logs does.
Sampling is one network call per step (as the seed samples): at each step from t to s a masked position
unmasks with probability (t - s) / t to a token drawn from the softmax.

Nothing here is used by training or sampling; it exists to be timed (`bench.py`) and to be checked for
computing what it says (tests/test_bench.py).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .device import autocast
from .networks import NetConfig, sinusoid


class ReferenceNet(nn.Module):
    """net(x [B, L] int) -> logits [B, L, vocab_out]: embedding + sinusoids, nn.TransformerEncoder, head."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        d = cfg.d_model
        self.embed = nn.Embedding(cfg.vocab_in, d)
        self.register_buffer("positions", sinusoid(torch.arange(cfg.max_len), d), persistent=False)
        layer = nn.TransformerEncoderLayer(
            d, cfg.n_heads, cfg.mlp_ratio * d, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        # enable_nested_tensor only helps with padding masks, which this network never gets
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, norm=nn.LayerNorm(d), enable_nested_tensor=False)
        self.head = nn.Linear(d, cfg.vocab_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.positions[: x.shape[1]].to(self.embed.weight.dtype)
        return self.head(self.encoder(h))


def masked_cross_entropy(logits: torch.Tensor, x0: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy -log softmax(logits)[x0] over the masked positions (0 if none is masked).

    Computed at every position and weighted by the mask, rather than by indexing the masked ones,
    so that no step waits for the host to count them."""
    per_position = F.cross_entropy(logits.float().flatten(0, 1), x0.flatten(), reduction="none")
    weight = masked.flatten().float()
    return (per_position * weight).sum() / weight.sum().clamp(min=1.0)


def mask_tokens(x0: torch.Tensor, mask_id: int, generator: torch.Generator | None = None):
    """(x_t, masked): t ~ U(0, 1) per sequence, each position masked with probability t."""
    t = torch.rand(x0.shape[0], 1, generator=generator, device=x0.device)
    masked = torch.rand(x0.shape, generator=generator, device=x0.device) < t
    return torch.where(masked, mask_id, x0), masked


class ReferenceTrainer:
    """The textbook training step: forward (bf16 autocast when `amp` is bf16), loss, backward, AdamW."""

    def __init__(self, cfg: NetConfig, mask_id: int, amp: torch.dtype | None, device: torch.device, lr: float = 1e-3):
        torch.manual_seed(0)
        self.net = ReferenceNet(cfg).to(device)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=lr)
        self.mask_id, self.amp, self.device = mask_id, amp, device
        self.gen = torch.Generator(device).manual_seed(0)

    def step(self, x0: torch.Tensor) -> float:
        """One optimiser step on the clean batch x0; the loss in nats per masked token."""
        xt, masked = mask_tokens(x0, self.mask_id, self.gen)
        with autocast(self.device, self.amp):
            loss = masked_cross_entropy(self.net(xt), x0, masked)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()


@torch.inference_mode()
def reference_sample(
    net: ReferenceNet,
    n: int,
    length: int,
    steps: int,
    mask_id: int,
    amp: torch.dtype | None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """n sequences from all-masked in `steps` network calls, one per step (no cache); [n, length] ids.

    From t to s = t - 1/steps a masked position unmasks with probability (t - s) / t (all at the last
    step) to a token drawn from softmax(logits): MDLM's ancestral step with the network's output taken
    as p(x0 | x_t)."""
    net.eval()
    x = torch.full((n, length), mask_id, dtype=torch.long, device=device)
    for i in range(steps):
        t = 1.0 - i / steps
        with autocast(device, amp):
            logits = net(x)
        probs = logits.float().softmax(-1)
        tokens = torch.multinomial(probs.flatten(0, 1), 1, generator=generator).view(n, length)
        unmask = torch.rand(x.shape, generator=generator, device=x.device) < (1.0 / steps) / t
        x = torch.where((x == mask_id) & unmask, tokens, x)
    return x
