"""Block diffusion (BD3-LM, Arriola et al. 2025): autoregressive over blocks, masked diffusion within each.

A sequence x of length L is cut into ceil(L / B) blocks x^1 .. x^K of B tokens (the last one shorter
when B does not divide L: the chain rule holds for any cut into consecutive blocks), and

    log p(x) = sum_b log p(x^b | x^{<b}).

Each block term is bounded by MDLM's negative ELBO of that block given the clean prefix x^{<b}: the
block is masked by the absorbing process at its own time t_b (each token masked with probability
1 - alpha_t = 1 - exp(-sbar(t_b))), and at a masked position i of block b

    l_i = sigma(t_b) / expm1(sbar(t_b)) * ( -log p_theta(x0_i | x_t^b, x^{<b}) )

(MDLM's weight, 1/t under the log-linear schedule). So

    -log p(x) <= sum_b E_{t_b} E_{x_t^b} [ sum_{i in b} l_i ],

estimated with one independent t_b per block, so every block contributes at every step. B = L is
MDLM; B = 1 is an AR model (each block is one token, the bound's mask-count form always masks it with
weight 1, and the bound is the exact NLL of the network's conditionals).

Training is vectorised (the paper's trick): the network reads [x_t ; x_0] (length 2L) with positions
[0..L-1, 0..L-1] and a block-causal mask (`training_mask`), so one pass gives every block's logits
given its own noisy block and the clean prefix. Sampling goes block by block with MDLM's reverse
process (`generate_blocks`); the prefix is clamped, and the network sees it through the same mask.

`--mask-rates` clips the masking rate training draws per block to [beta, omega], fixed or chosen at
every evaluation by the variance of the estimate (the paper's data-driven schedule, clipped.py).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F

from ..processes import Process
from ..sampling import SampleResult, SampleSpec, generate
from ..schedules import Schedule
from .base import ANIMATION_REFUSAL, OBJECTIVES
from .clipped import AUTO, CANDIDATES, FULL, clipped_counts, least_variance, parse_mask_rates
from .mdlm import MDLM
from .option import Option


def block_causal_mask(length: int, block: int, device=None) -> torch.Tensor:
    """[length, length] bool, True where query i may attend key j: block(j) <= block(i)."""
    b = torch.arange(length, device=device) // block
    return b[None, :] <= b[:, None]


def training_mask(length: int, block: int, device=None) -> torch.Tensor:
    """[2L, 2L] bool attention mask for the input [x_t ; x_0] (True = may attend).

    A query in the x_t half in block b attends the x_t keys of block b and the x_0 keys of blocks < b;
    a query in the x_0 half in block b attends the x_0 keys of blocks <= b. No query sees x_t of another
    block, and nothing sees x_0 of its own block from the x_t half, so the x_t logits of block b are a
    function of (x_t^b, x_0^{<b}) only.
    """
    b = torch.arange(length, device=device) // block
    same, before, upto = b[:, None] == b[None, :], b[None, :] < b[:, None], b[None, :] <= b[:, None]
    top = torch.cat([same, before], dim=1)  # x_t queries: [x_t keys | x_0 keys]
    bottom = torch.cat([torch.zeros_like(same), upto], dim=1)  # x_0 queries
    return torch.cat([top, bottom], dim=0)


@OBJECTIVES.register
class BlockDiffusion(MDLM):
    """BD3-LM: the sum over blocks of MDLM's NELBO of each block given the clean prefix (see module doc).

    `loss`, `loss_at_mask_count`, `training_loss` and `log_score` have MDLM's interfaces and units (a
    [B] estimate of the bound in nats per sequence); `log_score` is MDLM's, used block by block when
    sampling. The network must ignore time: each block has its own noise level.
    """

    name = "bd3lm"
    options = (
        Option(
            "block_size",
            "--diffusion-block",
            int,
            4,
            "tokens per block (the last block of a sequence may be shorter)",
            1,
            10**5,
            metavar="B",
        ),
        Option(
            "mask_rates",
            "--mask-rates",
            str,
            "full",
            "the masking rates training draws per block: full (the bound), BETA:OMEGA (clipped to U[BETA, OMEGA]) "
            "or auto (the interval of least estimator variance, chosen again at every evaluation)",
            metavar="full|auto|BETA:OMEGA",
            parse=parse_mask_rates,
        ),
    )

    @classmethod
    def refuse(cls, config):
        if config.process != "absorbing" or config.time_conditioning:
            # each block has its own noise level, which one per-sequence time embedding cannot carry
            return "--objective bd3lm needs --process absorbing and takes no --time-conditioning"
        return None

    def __init__(self, process: Process, schedule: Schedule, block_size: int, mask_rates: str = "full"):
        super().__init__(process, schedule)
        if block_size < 1:
            raise ValueError(f"block size must be at least 1, not {block_size}")
        self.block_size = block_size
        rates = parse_mask_rates(mask_rates)
        self.search = rates == AUTO  # data-driven: `adapt` chooses the interval at every evaluation
        self.rates: tuple[float, float] = FULL if self.search else rates

    @property
    def length_multiple(self) -> int:
        return self.block_size  # blocks stay whole

    @property
    def any_order(self) -> bool:
        return False  # a block sees only the clean blocks before it

    def num_blocks(self, length: int) -> int:
        return -(-length // self.block_size)

    def by_block(self, v: torch.Tensor, fill) -> torch.Tensor:
        """[n, L] -> [n, blocks, B], the last block filled up with `fill` where it is short."""
        n, L = v.shape
        return F.pad(v, (0, self.num_blocks(L) * self.block_size - L), value=fill).view(n, -1, self.block_size)

    def per_position(self, v: torch.Tensor, length: int) -> torch.Tensor:
        """[n, blocks] -> [n, length]: each block's value at each of its positions."""
        return v.repeat_interleave(self.block_size, dim=1)[:, :length]

    def block_logits(self, net, xt: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """[B, L, V] logits of every block given its noisy tokens and the clean prefix, in one pass."""
        if getattr(net, "time_conditioned", False):
            raise ValueError("bd3lm needs a network without time conditioning (each block has its own time)")
        L = x0.shape[1]
        positions = torch.arange(L, device=x0.device).repeat(2)
        mask = training_mask(L, self.block_size, x0.device)
        return net(torch.cat([xt, x0], dim=1), None, attn_mask=mask, position_ids=positions)[:, :L].float()

    def block_times(self, n: int, blocks: int, t_min: float, generator, device) -> torch.Tensor:
        """[n, blocks] times: each block's column is stratified over the batch (as MDLM's t), in an
        independent random order per block, so a sequence's blocks get unrelated noise levels."""
        order = torch.rand(blocks, n, generator=generator, device=device).argsort(-1)
        u = torch.rand(blocks, n, generator=generator, device=device, dtype=torch.float64)
        return (t_min + (1 - t_min) * (order + u) / n).float().T

    def loss(self, net, x0, t=None, generator=None, t_min=1e-3):
        """[B] one-sample NELBO in nats; t is None (drawn per block), [B] (shared by the blocks) or [B, n_blocks]."""
        n, L = x0.shape
        blocks = self.num_blocks(L)
        if t is None:
            t = self.block_times(n, blocks, t_min, generator, x0.device)
        t = t.reshape(n, -1).expand(n, blocks)
        sbar, sigma = self.per_position(self.schedule.total(t), L), self.per_position(self.schedule.rate(t), L)
        xt = self.process.perturb(x0, sbar, generator)
        out = self.block_logits(net, xt, x0)
        return self.position_loss(out, xt, x0, sbar, sigma).sum(-1)

    def training_loss(self, net, x0, generator=None, rates: tuple[float, float] | None = None):
        """[B] the bound in its mask-count form with an independent k_b ~ U{1..n_b} per block (n_b its
        moving positions: B in a fixed window), or with the block's masking rate clipped to `rates`
        (default: the run's, see clipped.py; not the bound unless [0, 1]).

        Same expectation as `loss` (the integral over t of (1/t) Bin(k; n_b, t) is 1/k), but every block
        contributes (under the time form a fifth of 4-token blocks draw no mask at all) and the weights
        n_b / k_b stay within [1, B] instead of growing like 1/t: a lower-variance gradient of the bound."""
        n, L = x0.shape
        u = torch.rand(n, self.num_blocks(L), generator=generator, device=x0.device, dtype=torch.float64)
        moving = self.by_block(self.process.moves(x0), False).sum(-1)
        k = clipped_counts(u, moving, self.rates if rates is None else rates)  # FULL: count_in_block
        return self.loss_at_mask_count(net, x0, k=k, generator=generator)

    @torch.no_grad()
    def adapt(self, net, x0, generator=None):
        """With --mask-rates auto: the candidate interval whose training estimate, per token, varies least
        over the records x0 (the same noise for every candidate), as the run's interval from now on."""
        if not self.search:
            return None
        tokens = self.process.moves(x0).sum(-1).clamp(min=1)
        state = None if generator is None else generator.get_state()
        estimates = {}
        for rates in CANDIDATES:
            if state is not None:
                generator.set_state(state)
            estimates[rates] = self.training_loss(net, x0, generator, rates=rates).float() / tokens
        self.rates = least_variance(estimates)
        return {"mask_rates": list(self.rates)}

    def training_state(self) -> dict:
        return {"mask_rates": list(self.rates)} if self.search else {}

    def load_training_state(self, state: dict) -> None:
        if self.search and "mask_rates" in state:
            self.rates = tuple(state["mask_rates"])

    def count_in_block(self, u: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """k_b = floor(u_b n_b) + 1: uniform on 1..n_b for u_b uniform in [0, 1) (1 for a block of context)."""
        return clipped_counts(u, self.by_block(self.process.moves(x0), False).sum(-1), FULL)

    def sample(self, net, batch, length, spec, *, clamp=None, clamp_values=None, generator=None, device="cpu"):
        return generate_blocks(
            net, self, batch, length, spec, clamp=clamp, clamp_values=clamp_values, generator=generator, device=device
        )

    def steps_taken(self, steps, length):
        """max(1, steps // blocks) in each block: fewer steps than blocks still take one per block."""
        blocks = self.num_blocks(length)
        return max(1, steps // blocks) * blocks

    def distill_refusal(self):
        return "ddlm distill: a bd3lm run samples block by block; distilling its blocks is not supported"

    def sampling_refusal(self, spec, animate=False):
        if spec.semi_ar_length:
            return "--semi-ar: a bd3lm run already samples block by block; it has no semi-AR mode"
        return ANIMATION_REFUSAL if animate else super().sampling_refusal(spec)

    def loss_at_mask_count(self, net, x0, k=None, generator=None, masked=None):
        """MDLM's mask-count form per block: for each block, k_b of its n_b moving positions masked at
        random, weight n_b / k_b (see DiffusionObjective.loss_at_mask_count), summed over blocks; a block
        of context tokens only (a record's padding) contributes nothing.

        `masked` ([B, L] bool, at least one per block with moving positions) fixes the masks; otherwise
        `k` is [B, n_blocks] counts in 1..n_b, or [B] counts in 1..n as the evaluator stratifies them for
        MDLM (n the row's moving positions), mapped to k_b = floor((k - 1 + u_b) n_b / n) + 1 with an
        independent u_b ~ U[0, 1) per block: uniform on 1..n_b for each block, and the evaluator's strata
        carry over. One block of moving tokens only (B = L) gives k_b = k exactly.
        """
        n, L = x0.shape
        blocks = self.num_blocks(L)
        moving = self.process.moves(x0)
        if masked is None:
            # random ranks among the moving positions of each block (MDLM's draw when there is one block)
            u = torch.rand(n, L, generator=generator, device=x0.device)
            ranks = self.by_block(torch.where(moving, u, 2.0), 2.0).argsort(-1).argsort(-1)
            if k.dim() == 1:
                u = torch.rand(n, blocks, generator=generator, device=x0.device, dtype=torch.float64)
                k = self.count_in_block((k[:, None] - 1 + u) / moving.sum(-1, keepdim=True), x0)
            masked = (ranks < k[:, :, None]).view(n, -1)[:, :L] & moving
        counts = self.by_block(masked, False).sum(-1)
        moving_counts = self.by_block(moving, False).sum(-1)
        if ((counts == 0) & (moving_counts > 0)).any():
            raise ValueError("every block with moving positions needs at least one masked position")
        xt = torch.where(masked, self.process.mask_id, x0)
        sbar = torch.full((n, 1), math.log(2.0), device=x0.device)  # expm1(sbar) = 1
        sigma = self.per_position(moving_counts / counts.clamp(min=1).float(), L)
        out = self.block_logits(net, xt, x0)
        return self.position_loss(out, xt, x0, sbar, sigma).sum(-1)


class BlockPrefix(torch.nn.Module):
    """The network on the block being sampled, given each sequence's clean prefix x^{<b}.

    Called as net(x^b [rows], sbar, rows=rows) by the sampler (it evaluates only the sequences that
    need it), it returns the logits of block b. Without `kv_cache`, every call re-reads the prefix:
    the network runs on [x^{<b} ; x^b] with the block-causal mask. With it, the prefix's keys and
    values at every layer are computed once, when a block is finished (`extend`): the prefix attends
    only to itself under the block-causal mask, so its keys and values do not depend on the block
    being sampled, and a call runs the block's B positions against them. The same logits, up to float
    rounding, for the cost of B positions instead of (b + 1) B."""

    wants_rows = True  # sampling.Evaluation passes the rows being evaluated
    time_conditioned = False

    def __init__(self, net, block: int, batch: int, kv_cache: bool, device):
        super().__init__()
        self.net, self.block, self.kv_cache = net, block, kv_cache
        self.prefix = torch.zeros(batch, 0, dtype=torch.long, device=device)
        self.caches = [{} for _ in net.layers] if kv_cache else None
        self.valid = torch.zeros(batch, 0, dtype=torch.bool, device=device)  # cached keys that are not padding

    def extend(self, block: torch.Tensor, last: bool = False) -> None:
        """Append a finished block [batch, B'] to the prefix, and unless it is the `last`, its keys and
        values to the cache: one pass of the block against the cached prefix."""
        start = self.prefix.shape[1]
        self.prefix = torch.cat([self.prefix, block], dim=1)
        if not self.kv_cache or last:
            return
        self.net(block, None, kv_caches=self.caches, start=start, cached_valid=self.valid if start else None)
        real = block != self.net.cfg.pad_id if self.net.cfg.pad_id is not None else torch.ones_like(block).bool()
        self.valid = torch.cat([self.valid, real], dim=1)

    def forward(self, x: torch.Tensor, sbar: torch.Tensor | None = None, rows: torch.Tensor | None = None):
        rows = slice(None) if rows is None else rows
        start = self.prefix.shape[1]
        if not self.kv_cache or start == 0:
            window = torch.cat([self.prefix[rows], x], dim=1)
            mask = block_causal_mask(window.shape[1], self.block, x.device)
            return self.net(window, None, attn_mask=mask)[:, start:]
        # every cached tensor, by row: a guided network keeps a second pass's keys beside these (guidance/cfg.py)
        frozen = [{**{key: t[rows] for key, t in c.items() if torch.is_tensor(t)}, "frozen": True} for c in self.caches]
        return self.net(x, None, kv_caches=frozen, start=start, cached_valid=self.valid[rows])


@torch.inference_mode()
def generate_blocks(
    net,
    objective: BlockDiffusion,
    batch: int,
    length: int,
    spec: SampleSpec,
    *,
    clamp: torch.Tensor | None = None,
    clamp_values: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> SampleResult:
    """Sample block by block, left to right: block b by MDLM's reverse process (`sampling.generate`)
    on its own B positions, the network reading the sampled prefix through `BlockPrefix` (its keys and
    values cached unless `spec.kv_cache` is off: the same samples either way). `steps` is the total
    over the sequence (`spec.steps`), divided among the blocks: max(1, steps // n_blocks) each, so
    fewer steps than blocks still take one per block; nfe is summed over blocks and counts the
    sampler's calls (the cache's one pass over each finished block is not one of them).

    Positions clamped by the caller are held in their block; like an AR model, the sampler conditions
    on them only from their block on. A block whose positions are all held costs no call.
    """
    size = objective.block_size
    blocks = objective.num_blocks(length)
    per_block = replace(spec, steps=objective.steps_taken(spec.steps, length) // blocks)
    context = BlockPrefix(net, size, batch, spec.kv_cache, device)
    nfe = torch.zeros(batch, dtype=torch.long, device=device)
    for b in range(blocks):
        lo, hi = b * size, min((b + 1) * size, length)
        hold = torch.zeros(batch, hi - lo, dtype=torch.bool, device=device)
        values = torch.zeros(batch, hi - lo, dtype=torch.long, device=device)
        if clamp is not None:
            hold, values = clamp[:, lo:hi], clamp_values[:, lo:hi]
        if hold.all():
            block = values
        else:
            result = generate(
                context, objective, batch, hi - lo, per_block, clamp=hold, clamp_values=values, generator=generator,
                device=device,
            )  # fmt: skip
            block = result.tokens
            nfe += result.nfe
        context.extend(block, last=b + 1 == blocks)
    return SampleResult(tokens=context.prefix, nfe=nfe)
