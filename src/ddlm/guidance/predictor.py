"""Predictor guidance (Nisonoff et al. 2024, "Unlocking Guidance for Discrete State-Space Diffusion and
Flow Models"; DESIGN.md section 5) for the absorbing process.

A predictor p_phi(y | x_t) of a record's label y is trained on noisy inputs x_t drawn from the run's own
forward process (each moving token masked with probability 1 - exp(-sbar(t)), t ~ U[0, 1]). Like the
default absorbing networks it ignores t: for the absorbing process p(y | x_t, t) does not depend on t,
because the posterior p(x0 | x_t) ∝ p(x0) [x0 agrees with x_t where x_t is unmasked] has no t in it (the
mask count tells the noise level).

Guided sampling reweights each single-site reverse rate by the predictor's ratio to the power gamma:

    R_y(x -> x^{i<-c}) = R(x -> x^{i<-c}) * ( p_phi(y | x^{i<-c}) / p_phi(y | x) )^gamma,

x^{i<-c} the state x with its masked position i set to the clean token c (the only single-site moves of
the reverse absorbing process). `PredictorGuided` wraps the network so that its raw output o gains, at
every masked position i and clean token c,

    o_ic += gamma * delta_ic,   delta_ic = log p_phi(y | x^{i<-c}) - log p_phi(y | x),

and nothing else changes, so every sampler (its cache included: the wrapper ignores time as the
network does) runs as it is. What the shift does depends on how the objective reads o:

* SEDD (absorbing): log s_c = o_c - log expm1(sbar) - log R, unnormalised, so every rate R(x -> x^{i<-c})
  is multiplied by the ratio^gamma exactly as above: the total rate at which i unmasks changes too.
* MDLM: s_c = softmax(o)_c / expm1(sbar), normalised, so the shift reweights which token i becomes,
  p(c | x_t) ratio_c^gamma / Z, while the schedule decides when i unmasks. At gamma = 1 with the exact
  predictor this is exact, because for the absorbing process

      sum_c p(x0_i = c | x_t) p(y | x^{i<-c}) = p(y | x_t),

  (x^{i<-c} carries exactly the information "x_t and x0_i = c"), so the guided rates of the conditional
  reverse process sum to the unguided ones at every masked position: the normaliser Z is 1.

Two ways to get delta (`SHIFTS`): `exact` scores every single-site change, (masked positions) x R
predictor inputs in batched calls; `taylor` takes one gradient of log p_phi(y | x) with respect to the
one-hot input and uses its first-order expansion, delta_ic ~ g_ic - g_i,mask (TAG in Nisonoff et al.),
for which the predictor reads its input through a linear map of the one-hot (`Predictor`).
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import UserError
from ..networks import Layer, NetConfig, Wrapper, sinusoid
from ..processes import Process
from ..registry import Registry
from ..schedules import Schedule

WEIGHTS, META = "predictor.safetensors", "predictor.json"
REPORT_TIMES = (0.0, 0.5, 0.9)  # the noise levels at which a predictor's held-out quality is reported


# --- the predictor ----------------------------------------------------------------------------------
@dataclass
class PredictorConfig:
    states: int  # input states of the run's process (its tokens and the mask)
    classes: int  # K labels
    max_len: int
    mask_id: int
    support: int  # tokens 0..support-1 move (are ever masked); the others are context
    pad_id: int | None = None  # an input id that attention and pooling never see (a record's padding)
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4

    def to_dict(self) -> dict:
        return asdict(self)


PREDICTOR_PRESETS: dict[str, dict] = {
    "tiny": dict(d_model=32, n_layers=1, n_heads=2),
    "small": dict(d_model=64, n_layers=2, n_heads=4),
    "medium": dict(d_model=128, n_layers=3, n_heads=4),
}


class Predictor(nn.Module):
    """p_phi(y | x_t): a small bidirectional transformer (networks.Layer), mean-pooled over the record's
    positions, then a linear head over the K labels. Returns log-probabilities [B, K].

    The input is either ids [B, L] (long) or a one-hot / mixture over the states [B, L, S] (float): the
    first layer is the linear map e(x) = onehot(x) W, so the log-probability is differentiable in the
    one-hot input (the `taylor` shift). Sinusoidal positions are added to the input, so a window cut
    short after a record's padding (the sampler does this) gives the same output as the full frame."""

    def __init__(self, cfg: PredictorConfig):
        super().__init__()
        self.cfg = cfg
        net = NetConfig(cfg.states, cfg.classes, cfg.max_len, cfg.d_model, cfg.n_layers, cfg.n_heads)
        self.embed = nn.Linear(cfg.states, cfg.d_model, bias=False)
        self.register_buffer("positions", sinusoid(torch.arange(cfg.max_len), cfg.d_model), persistent=False)
        self.layers = nn.ModuleList(Layer(net) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.classes)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.zeros_(self.head.weight)  # starts at the uniform guess

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.embed.weight  # [d_model, S]
        if x.is_floating_point():
            h = x.to(weight.dtype) @ weight.T
            # which positions are padding does not depend on the one-hot's value: no gradient flows there
            ids = x.detach().argmax(-1)
        else:
            h, ids = weight.T[x], x
        L = x.shape[1]
        h = h + self.positions[:L].to(h.dtype)
        valid = torch.ones_like(ids, dtype=torch.bool) if self.cfg.pad_id is None else ids != self.cfg.pad_id
        mask = None if valid.all() else valid[:, None, None, :]
        for layer in self.layers:
            h = layer(h, attn_mask=mask)
        h = self.ln_f(h)
        w = valid.to(h.dtype)[..., None]
        pooled = (h * w).sum(1) / w.sum(1).clamp(min=1.0)
        return F.log_softmax(self.head(pooled).float(), dim=-1)


# --- training on the run's forward process ---------------------------------------------------------
@dataclass
class NoisyInputs:
    """Records x0 [N, L] with labels [N], corrupted by a run's forward process at chosen times."""

    x0: torch.Tensor
    labels: torch.Tensor
    process: Process
    schedule: Schedule

    def at(self, rows: torch.Tensor, t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """x_t for the records `rows` at times t [len(rows)]: each moving token masked independently with
        probability 1 - exp(-sbar(t)), the forward process the sampler reverses."""
        sbar = self.schedule.total(t.double()).float()
        return self.process.perturb(self.x0[rows], sbar[:, None], generator)


@dataclass
class Budget:
    """Stop after `steps` optimiser steps, or after `seconds` (whichever is given; seconds win)."""

    steps: int
    seconds: float | None = None

    def done(self, step: int, start: float) -> bool:
        if self.seconds is not None:
            return time.perf_counter() - start >= self.seconds
        return step >= self.steps


def fit(
    predictor: Predictor,
    data: NoisyInputs,
    budget: Budget,
    *,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    progress=None,
) -> dict:
    """Minimise E_{x0, y} E_{t ~ U[0,1]} E_{x_t | x0} [-log p_phi(y | x_t)] with AdamW; the minimiser
    is the Bayes posterior p(y | x_t) of the forward process. Returns {"steps", "seconds", "loss"} (the
    mean loss of the last 50 steps, nats)."""
    gen = torch.Generator(data.x0.device).manual_seed(seed)
    opt = torch.optim.AdamW(predictor.parameters(), lr=lr, weight_decay=0.01)
    predictor.train()
    start, step, recent = time.perf_counter(), 0, []
    while not budget.done(step, start):
        rows = torch.randint(len(data.x0), (batch_size,), generator=gen, device=gen.device)
        t = torch.rand(batch_size, generator=gen, device=gen.device)
        loss = F.nll_loss(predictor(data.at(rows, t, gen)), data.labels[rows])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(predictor.parameters(), 1.0)
        opt.step()
        step += 1
        recent = (recent + [loss.item()])[-50:]
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{sum(recent) / len(recent):.3f}")
    predictor.eval()
    mean = sum(recent) / len(recent) if recent else float("nan")
    return {"steps": step, "seconds": time.perf_counter() - start, "loss": mean}


@torch.no_grad()
def held_out_quality(
    predictor: Predictor, data: NoisyInputs, frequencies: torch.Tensor, times=REPORT_TIMES, seed: int = 0
) -> list[dict]:
    """At each time t: the fraction of moving tokens masked there, 1 - exp(-sbar(t)), and the accuracy and
    mean log-loss (nats) of the predictor on the held-out records at that noise level (one draw of x_t per
    record, seeded), beside the log-loss of the training labels' `frequencies` [K] (what a predictor that
    reads nothing would score)."""
    frequencies = frequencies.to(data.labels.device)
    prior_loss = -(frequencies[data.labels].clamp(min=1e-12)).log().mean().item()
    rows, out = torch.arange(len(data.x0), device=data.labels.device), []
    for t in times:
        gen = torch.Generator(data.x0.device).manual_seed(seed)
        log_p = torch.cat(
            [predictor(data.at(r, torch.full((len(r),), t, device=r.device), gen)) for r in rows.split(256)]
        )
        masked = -torch.expm1(-data.schedule.total(torch.tensor(t, dtype=torch.float64))).item()
        out.append(
            {
                "t": t,
                "masked": masked,
                "accuracy": (log_p.argmax(-1) == data.labels).double().mean().item(),
                "log_loss": F.nll_loss(log_p, data.labels).item(),
                "prior_log_loss": prior_loss,
            }
        )
    return out


# --- saving and loading ------------------------------------------------------------------------------
def save_predictor(predictor: Predictor, folder: Path, meta: dict) -> None:
    """folder/predictor.safetensors (weights) and folder/predictor.json (its config, labels, provenance,
    quality); the JSON last, so a folder with a JSON holds a whole predictor."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous() for k, v in predictor.state_dict().items()}
    save_file(state, folder / WEIGHTS, metadata={"format": "pt", "library": "ddlm"})
    (folder / META).write_text(json.dumps({**meta, "config": predictor.cfg.to_dict()}, indent=1) + "\n")


def load_predictor(folder: str | Path, device: torch.device | str = "cpu") -> tuple[Predictor, dict]:
    """(predictor in eval mode, its JSON); a folder that does not hold one is a UserError naming it."""
    folder = Path(folder)
    if not (folder / META).is_file() or not (folder / WEIGHTS).is_file():
        raise UserError(f"--predictor {folder}: no {META} and {WEIGHTS} there (made by ddlm train-predictor)")
    try:
        meta = json.loads((folder / META).read_text())
        predictor = Predictor(PredictorConfig(**meta["config"]))
        predictor.load_state_dict(load_file(folder / WEIGHTS))
    except (ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:
        raise UserError(f"--predictor {folder}: not a readable predictor ({type(e).__name__})") from None
    return predictor.to(device).eval(), meta


# --- the shift delta_ic = log p(y | x^{i<-c}) - log p(y | x) -----------------------------------------
class Shift:
    """delta [B, L, V]: at each masked position i of x [B, L] and clean token c < support, the change of
    log p(target | .) when i is set to c; zero elsewhere (unmasked positions, context tokens)."""

    name: str

    def __call__(self, predictor: Callable, x: torch.Tensor, target: int, mask_id: int, support: int, vocab: int):
        raise NotImplementedError


SHIFTS: Registry[type[Shift]] = Registry("predictor guidance approximation")


@SHIFTS.register
class ExactShift(Shift):
    """Every single-site change scored: one predictor input per (masked position, clean token), in
    batched calls of about `chunk_tokens` tokens; (masked positions) x R + 1 predictor rows per call."""

    name = "exact"
    chunk_tokens = 1 << 18  # bounds the activations of one batched call (a few hundred MB for `small`)

    @torch.no_grad()
    def __call__(self, predictor, x, target, mask_id, support, vocab):
        B, L = x.shape
        base = predictor(x)[:, target]  # [B]
        b, i = (x == mask_id).nonzero(as_tuple=True)
        c = torch.arange(support, device=x.device).repeat(len(b))
        b, i = b.repeat_interleave(support), i.repeat_interleave(support)
        values = torch.empty(len(b), dtype=base.dtype, device=x.device)
        chunk = max(1, self.chunk_tokens // L)
        for first in range(0, len(b), chunk):
            part = slice(first, first + chunk)
            changed = x[b[part]].clone()
            changed[torch.arange(len(changed), device=x.device), i[part]] = c[part]
            values[part] = predictor(changed)[:, target]
        shift = torch.zeros(B, L, vocab, dtype=base.dtype, device=x.device)
        # where p(target | x) = 0 no single change has a ratio (0 / 0): leave those rates as they are
        shift[b, i, c] = torch.where(base[b] == -torch.inf, 0.0, values - base[b])
        return shift


@SHIFTS.register
class TaylorShift(Shift):
    """First order: with g = d log p(target | e) / d e at the one-hot e of x, delta_ic ~ g_ic - g_i,mask
    (the change of the input at i is e_c - e_mask). One forward and one backward pass."""

    name = "taylor"

    def __init__(self):
        self.trainable: tuple[nn.Module, nn.Module] | None = None  # (a predictor, its copy autograd can use)

    def differentiable(self, predictor: nn.Module) -> nn.Module:
        """The predictor, or (once) a copy of it outside inference mode when its weights were made inside it
        (a bf16 copy taken there): autograd cannot record a product with an inference tensor."""
        if not any(p.is_inference() for p in predictor.parameters()):
            return predictor
        if self.trainable is None or self.trainable[0] is not predictor:
            self.trainable = (predictor, copy.deepcopy(predictor))
        return self.trainable[1]

    def __call__(self, predictor, x, target, mask_id, support, vocab):
        # the samplers run under inference mode; the gradient needs a graph, so leave it for this call
        with torch.inference_mode(False), torch.enable_grad():
            predictor = self.differentiable(predictor)
            onehot = F.one_hot(x.clone(), mask_id + 1).float().requires_grad_(True)
            (grad,) = torch.autograd.grad(predictor(onehot)[:, target].sum(), onehot)
        grad = torch.nan_to_num(grad.detach(), nan=0.0, posinf=0.0, neginf=0.0)  # p(target | x) = 0: no shift
        shift = grad[..., :vocab] - grad[..., mask_id : mask_id + 1]
        shift[..., support:] = 0.0
        return torch.where((x == mask_id)[..., None], shift, 0.0)


class PredictorGuided(Wrapper):
    """net(x, ...) + gamma * delta at the masked positions (module docstring); everything else (`cfg`,
    `time_conditioned`, `length_log_probs`, ...) is the wrapped network's.

    `predictor(x) -> [B, K]` log p(label | x), for ids [B, L] (and, for the `taylor` shift, for a float
    one-hot [B, L, S]); `target` the label index; `support` the moving tokens (the only ones a masked
    position may become). `predictor_calls` and `predictor_inputs` count the predictor's forward passes
    and the sequences they read (guidance's cost beside the network's calls)."""

    def __init__(self, net, predictor, target: int, gamma: float, shift: Shift, mask_id: int, support: int):
        super().__init__(net)
        self.predictor, self.shift = predictor, shift
        self.target, self.gamma, self.mask_id, self.support = target, float(gamma), mask_id, support
        self.predictor_calls = self.predictor_inputs = 0
        # a hook, not a wrapper: the taylor shift needs the module itself (and a copy of it keeps the hook)
        predictor.register_forward_pre_hook(self._count)

    def _count(self, module, inputs) -> None:
        self.predictor_calls += 1
        self.predictor_inputs += inputs[0].shape[0]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.net(x, *args, **kwargs)
        out = out.to(torch.promote_types(out.dtype, torch.float32))  # a bf16 output would round the shift away
        if self.gamma == 0.0 or not (x == self.mask_id).any():
            return out
        delta = self.shift(self.predictor, x, self.target, self.mask_id, self.support, out.shape[-1])
        return out + self.gamma * delta.to(out.dtype)


def guidance_refusal(objective) -> str | None:
    """Why predictor guidance cannot steer this run's sampler, or None: it needs a masked (absorbing)
    diffusion sampled position by position from its clean-token scores (sedd or mdlm), not the uniform
    process (whose single-site moves change a clean token), AR, D3PM's discrete steps or BD3-LM's blocks."""
    if getattr(objective, "any_order", False) and getattr(objective, "time_separable", False):
        return None
    process = objective.process.name
    return (
        f"predictor guidance needs a masked diffusion run (sedd or mdlm, --process absorbing); "
        f"this run is --objective {objective.name} --process {process}"
    )


def check_predictor_fits(meta: dict, objective, max_len: int, where: str) -> None:
    """The predictor reads this run's states and lengths, or a UserError naming `where`."""
    cfg = meta["config"]
    states, mask_id = objective.process.num_states, objective.process.mask_id
    if cfg["states"] != states or cfg["mask_id"] != mask_id or cfg["max_len"] < max_len:
        raise UserError(
            f"{where}: the predictor reads {cfg['states']} states of {cfg['max_len']} positions; this run has "
            f"{states} states of {max_len} (train one for this run with ddlm train-predictor)"
        )


def target_index(meta: dict, target: str | None, where: str = "--target") -> int:
    """The index of label `target` among the predictor's labels (its default target when None)."""
    names = meta["labels"]
    target = meta.get("default_target") if target is None else target
    if target is None:
        raise UserError(f"{where}: name the label to guide towards, one of {', '.join(names)}")
    if target not in names:
        raise UserError(f"{where} {target}: not a label of this predictor; its labels are {', '.join(names)}")
    return names.index(target)


def predictor_guided(loaded, folder: str | Path, target: str | None, gamma: float, approx: str = "exact"):
    """The network a sampler should call to steer `loaded` (a run.LoadedRun) with the predictor in
    `folder` towards label `target` at strength gamma: `PredictorGuided` around the run's network, on
    the run's device. Each mistake is a UserError naming its flag."""
    refusal = guidance_refusal(loaded.objective)
    if refusal is not None:
        raise UserError(f"--predictor: {refusal}")
    device = next(loaded.net.parameters()).device
    predictor, meta = load_predictor(folder, device)
    check_predictor_fits(meta, loaded.objective, loaded.net.cfg.max_len, f"--predictor {folder}")
    if approx not in SHIFTS:
        raise UserError(f"--guide-approx {approx}: use one of {', '.join(SHIFTS.names())}")
    process = loaded.objective.process
    index = target_index(meta, target)
    return PredictorGuided(loaded.net, predictor, index, gamma, SHIFTS[approx](), process.mask_id, process.support)


def predictor_network(loaded, options):
    """The network a sampler should call: the run's own, or steered as `options` say: anything with the
    attributes `predictor`, `target`, `guidance` and `guide_approx` (the parsed flags of `ddlm sample`,
    or the Python API's options); a UserError names a predictor flag given without --predictor."""
    if getattr(options, "predictor", None) is None:
        for flag in ("target", "guidance", "guide_approx"):
            if getattr(options, flag, None) is not None:
                raise UserError(f"--{flag.replace('_', '-')} needs --predictor DIR (ddlm train-predictor)")
        return loaded.net
    gamma = 1.0 if options.guidance is None else options.guidance
    if isinstance(gamma, bool) or not isinstance(gamma, int | float) or not 0 <= gamma < math.inf:
        raise UserError(f"--guidance {gamma}: give a strength, a finite number >= 0")
    return predictor_guided(loaded, options.predictor, options.target, gamma, options.guide_approx or "exact")
