"""The transformer backbone shared by every objective.

An encoder-only transformer (pre-LayerNorm, sinusoidal positions, fused QKV projection,
`scaled_dot_product_attention`). With `causal=True` the same network is the AR baseline.
With `time_conditioning=True` an MLP embedding of the total noise sbar is added to every
position (the seed's design); for the absorbing process it is off by default, which costs
nothing in likelihood (MDLM) and makes the sampler's cache exact. With `label_classes = K > 0`
an embedding of a record's label y in 0..K-1, or of the null label K, is added to every position:
the network then models p(x | y) and, trained with the label dropped to null at random, p(x) too
(classifier-free guidance, guidance/cfg.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class NetConfig:
    vocab_in: int  # input states (real tokens, plus the mask for the absorbing process)
    vocab_out: int  # output columns (real tokens)
    max_len: int
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0
    causal: bool = False
    time_conditioning: bool = False
    learned_positions: bool = False  # added to the sinusoids: lets the model learn any layout
    layout: str = "sequence"  # "sudoku": also embed each cell's row, column and box (81 positions)
    # "sinusoidal": added to the input (the seed's design); "rotary": rotary embeddings in attention
    # (SEDD and MDLM's backbones), which make relative offsets easy to learn
    positions: str = "sinusoidal"
    pad_id: int | None = None  # an input id that attention never sees (a record's padding)
    length_classes: int = 0  # > 0: a length head, p(n) for n = 1 .. length_classes
    self_conditioning: bool = False  # the input may carry the network's own estimate of x0 [B, L, vocab_out]
    label_classes: int = 0  # > 0: a label embedding of that many labels and the null label (index label_classes)

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, dict] = {
    "tiny": dict(d_model=32, n_layers=2, n_heads=2),
    "mini": dict(d_model=128, n_layers=4, n_heads=4),  # small families trained for many epochs on a CPU
    "small": dict(d_model=256, n_layers=4, n_heads=4),
    "medium": dict(d_model=384, n_layers=6, n_heads=6),
}


def sinusoid(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer sinusoidal features of (possibly fractional) positions: [..., dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device) / half)
    angles = positions[..., None].float() * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def rotary_tables(length: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position * frequency, [length, head_dim / 2] (RoFormer's frequencies)."""
    freqs = 10000.0 ** (-torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.arange(length).float()[:, None] * freqs
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (first half, second half) pair of features by its position's angle: q.k then
    depends on positions only through their difference."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class SelfAttention(nn.Module):
    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.causal = cfg.causal
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)  # one fused matmul instead of three
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(
        self, x: torch.Tensor, kv_cache: dict | None = None, rotation=None, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        if rotation is not None:
            q, k = rotate(q, *rotation), rotate(k, *rotation)
        is_causal = self.causal
        if kv_cache is not None:  # the cached keys and values come first (AR decoding, a bd3lm prefix)
            if "k" in kv_cache:
                k = torch.cat([kv_cache["k"], k], dim=2)
                v = torch.cat([kv_cache["v"], v], dim=2)
                is_causal = self.causal and L > 1  # one new query may attend to every cached position
            if not kv_cache.get("frozen", False):  # a frozen cache is read, never extended
                kv_cache["k"], kv_cache["v"] = k, v
        if attn_mask is not None:  # an explicit pattern (block diffusion, padding) replaces the causal flag
            if self.causal:
                raise ValueError("attn_mask is for a non-causal network")
            is_causal = False
        dropout = self.dropout if self.training else 0.0
        if bf16_products_fit(q, k, attn_mask):
            y = bf16_attention(q, k, v, attn_mask, is_causal, dropout)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=dropout)
        return self.proj(y.transpose(1, 2).reshape(B, L, D))


# bf16_attention's [B, heads, L, L] scores: above this many per head, the memory-frugal SDPA kernel instead
BF16_ATTENTION_MAX_SCORES = 512 * 512


def bf16_products_fit(q, k, attn_mask) -> bool:
    """Use `bf16_attention`: bf16 on a CPU, a boolean mask if any, short enough.

    PyTorch's CPU flash-attention kernel is slower in bf16 than in fp32 (on machine C, AVX-512 BF16, one
    thread, batch 32 x 129: backward 55 ms a layer against 24 in fp32, forward 12 against 10), and it
    was a quarter of a bf16 training step; two bf16 matrix products run on the bf16 units instead
    (training step 1.27x faster, a sampling call 1.09x, measured in turn in one process). The causal
    flag and dropout are taken too: the kernel is as slow with them (dropout 39 ms against 30 a layer,
    causal 43 against 39.5, SEDD's and AR's shapes)."""
    return (
        q.dtype == torch.bfloat16
        and q.device.type == "cpu"
        and (attn_mask is None or attn_mask.dtype == torch.bool)
        and q.shape[-2] * k.shape[-2] <= BF16_ATTENTION_MAX_SCORES
    )


def bf16_attention(
    q, k, v, attn_mask: torch.Tensor | None, is_causal: bool = False, dropout: float = 0.0
) -> torch.Tensor:
    """dropout(softmax(q k^T / sqrt(d) where mask)) v, as bf16 autocast runs any other layer: both
    products in bf16 (fp32 accumulation), the scaling, mask and softmax in fp32. The same function as
    SDPA's, rounded as a bf16 matmul rounds: `is_causal` is SDPA's mask ones(L, S).tril() (query i sees
    keys 0..i), and dropout zeroes each attention weight with probability p and scales the rest by
    1/(1-p), as SDPA's `dropout_p` does."""
    scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    if is_causal:
        attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    weights = scores.softmax(-1)
    if dropout > 0.0:
        weights = F.dropout(weights, dropout)
    return weights.to(v.dtype) @ v


class Layer(nn.Module):
    """One transformer layer: pre-LayerNorm self-attention, then a pre-LayerNorm MLP, each residual."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model),
            nn.GELU(approximate="tanh"),
            nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model),
            nn.Dropout(cfg.dropout),
        )

    def forward(
        self, x: torch.Tensor, kv_cache: dict | None = None, rotation=None, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), kv_cache, rotation, attn_mask)
        return x + self.mlp(self.ln2(x))


def rename_old_keys(state_dict: dict, prefix: str, *args) -> None:
    """Checkpoints written before the layers were renamed call them `blocks.N`; load them as `layers.N`."""
    for key in [k for k in state_dict if k.startswith(prefix + "blocks.")]:
        state_dict[prefix + "layers." + key[len(prefix + "blocks.") :]] = state_dict.pop(key)


class Transformer(nn.Module):
    """net(x [B, L] int, sbar [B] or None) -> output [B, L, vocab_out] (raw; objectives parameterise it)."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_in, cfg.d_model)
        self.register_buffer("positions", sinusoid(torch.arange(cfg.max_len), cfg.d_model), persistent=False)
        if cfg.positions == "rotary":
            self.positions.zero_()  # positions enter through the attention's rotations instead
            cos, sin = rotary_tables(cfg.max_len, cfg.d_model // cfg.n_heads)
            self.register_buffer("rot_cos", cos, persistent=False)
            self.register_buffer("rot_sin", sin, persistent=False)
        if cfg.learned_positions:
            self.position_embed = nn.Embedding(cfg.max_len, cfg.d_model)
        if cfg.layout == "sudoku":
            # The rules of Sudoku are about rows, columns and boxes; giving each cell those three
            # embeddings lets attention find its 20 peers by a dot product instead of learning the
            # layout from 81 unrelated positions.
            cell = torch.arange(81)
            row, col = cell // 9, cell % 9
            self.register_buffer("units", torch.stack([row, 9 + col, 18 + (row // 3) * 3 + col // 3], -1), False)
            self.unit_embed = nn.Embedding(27, cfg.d_model)
        if cfg.time_conditioning:
            self.time_mlp = nn.Sequential(
                nn.Linear(cfg.d_model, cfg.d_model), nn.SiLU(), nn.Linear(cfg.d_model, cfg.d_model)
            )
        if cfg.self_conditioning:
            # a zero map at first: the network starts as if it had no estimate (analog bits, CDCD)
            self.estimate_embed = nn.Linear(cfg.vocab_out, cfg.d_model, bias=False)
        if cfg.label_classes:
            self.label_embed = nn.Embedding(cfg.label_classes + 1, cfg.d_model)  # the last row: the null label
        if cfg.length_classes:
            # p(n) of a record's length, learned with the rest of the model: p(x) = p(n) p(residues | n)
            self.length_logits = nn.Parameter(torch.zeros(cfg.length_classes))
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.n_layers))
        self._register_load_state_dict_pre_hook(rename_old_keys)
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_out)
        self.apply(self._init_weights)
        if cfg.layout == "sudoku":
            # Cells are described by their units alone, and at unit scale: with the default 0.02 the
            # sinusoids (amplitude 1) drown token and unit, and a first run sat at log2(9) bits.
            self.positions.zero_()
            nn.init.normal_(self.embed.weight, std=1.0)
            nn.init.normal_(self.unit_embed.weight, std=1.0)
        if cfg.self_conditioning:
            nn.init.zeros_(self.estimate_embed.weight)
        # A zero head starts every objective at its uninformed point (uniform scores / probabilities).
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    @property
    def time_conditioned(self) -> bool:
        return self.cfg.time_conditioning

    def length_log_probs(self) -> torch.Tensor | None:
        """log p(n) for n = 1 .. length_classes (index n - 1), in float32; None without a length head."""
        if not self.cfg.length_classes:
            return None
        return torch.log_softmax(self.length_logits.float(), dim=-1)

    def forward(
        self,
        x: torch.Tensor,
        sbar: torch.Tensor | None = None,
        kv_caches: list[dict] | None = None,
        start: int = 0,
        *,
        attn_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        x0_estimate: torch.Tensor | None = None,
        cached_valid: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`attn_mask` (bool [L, L], True = may attend) replaces full (or causal) attention, and
        `position_ids` (long [L], each < max_len) replace the positions start..start+L-1 in every
        position table; block diffusion feeds [x_t ; x_0] with positions [0..L-1, 0..L-1]. Keys holding
        the padding id (`cfg.pad_id`) are never attended to; with `kv_caches`, `cached_valid` ([B, Lc]
        bool) says which cached keys are not padding. `x0_estimate` ([B, L, vocab_out] probabilities)
        is the network's own previous estimate of x0, for a self-conditioned network. `labels` ([B] long,
        each in 0..label_classes, the last the null label) condition a labelled network; None is the
        null label for every row.

        `kv_caches` (one dict per layer) hold the keys and values of earlier positions: the input is
        appended to them (a dict with "frozen": True is read only), and a non-causal network attends to
        every cached position, so a bd3lm block sees its clean prefix without recomputing it."""
        L = x.shape[1]
        if self.cfg.pad_id is not None:
            valid = x != self.cfg.pad_id
            if cached_valid is not None:
                valid = torch.cat([cached_valid, valid], dim=1)
            if not valid.all():
                keys = valid[:, None, None, :]  # [B, 1, 1, Lk]: a query sees the record only
                attn_mask = keys if attn_mask is None else attn_mask & keys
        # a slice when no ids are given, so the default path indexes exactly as before
        pos = slice(start, start + L) if position_ids is None else position_ids
        h = self.embed(x) + self.positions[pos].to(self.embed.weight.dtype)
        if self.cfg.learned_positions:
            h = h + self.position_embed.weight[pos]
        if self.cfg.layout == "sudoku":
            h = h + self.unit_embed(self.units[pos]).sum(-2)
        if self.cfg.self_conditioning and x0_estimate is not None:
            h = h + self.estimate_embed(x0_estimate.to(h.dtype))
        if self.cfg.label_classes:
            h = h + self.label_embedding(labels, x.shape[0], x.device).to(h.dtype)[:, None, :]
        elif labels is not None:
            raise ValueError("labels given to a network trained without labels")
        if self.cfg.time_conditioning:
            # log(sbar) spreads the noise levels of every schedule over a useful range of frequencies
            # (clamped: D3PM's last absorbing step sits at sbar = inf)
            log_sbar = torch.log(sbar.float().clamp(1e-8, 1e4))
            h = h + self.time_mlp(sinusoid(log_sbar * 100.0, self.cfg.d_model).to(h.dtype))[:, None, :]
        rotation = None
        if self.cfg.positions == "rotary":
            rotation = (self.rot_cos[pos], self.rot_sin[pos])
        for i, layer in enumerate(self.layers):
            h = layer(h, None if kv_caches is None else kv_caches[i], rotation, attn_mask)
        return self.head(self.ln_f(h))

    def label_embedding(self, labels: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        """[B, d_model] the embedding of each row's label (the null label where `labels` is None)."""
        if labels is None:
            labels = torch.full((batch,), self.cfg.label_classes, dtype=torch.long, device=device)
        return self.label_embed(labels)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class Wrapper(nn.Module):
    """A module around a network (`self.net`) that passes on every attribute it lacks, so what reads the
    network's `cfg`, `layers`, `length_log_probs`, ... reads through it: how guidance and labels wrap a
    network without the samplers knowing."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "net":  # not set yet: never recurse
                raise
            return getattr(self.net, name)


class Labelled(Wrapper):
    """`net` with each row's label bound: labelled(x, ...) = net(x, ..., labels=labels). The objectives
    call a network without labels; this is how a labelled batch reaches it (training, the bound given
    the label). Everything else (`cfg`, `layers`, `length_log_probs`, ...) is the wrapped network's."""

    def __init__(self, net, labels: torch.Tensor):
        super().__init__(net)
        self.labels = labels

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.net(x, *args, labels=self.labels, **kwargs)
