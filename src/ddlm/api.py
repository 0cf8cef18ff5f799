"""The Python API: a trained run as a model a script samples, infills and scores.

    import ddlm

    model = ddlm.load("runs/acyp")
    out = model.sample(8, steps=64, reward="charge", particles=8, reward_temperature=0.5)
    model.sample(8, condition="charge_hi", cfg=2.0)                    # a run trained with --labels
    model.sample(8, predictor="runs/pred", target="yes", guidance=1.0)  # ddlm train-predictor
    out.texts, out.rewards, out.nfe, out.seconds
    model.infill("MKV_{3,8}GRVQGV", 4, reward=lambda texts: [t.count("K") for t in texts], particles=4)
    model.score(["MKVLAAGRVQGV", ...])   # bits per sequence: the bound on -log2 p(x)

`sample` and `infill` take the options of `ddlm sample` and `ddlm infill`, by the flags' names
(`--top-p` is `top_p`, `--no-cache` is `cache=False`; see `Options`), and a reward may be any Python
callable taking a list of decoded texts. The CLI calls the same functions, so a mistake is the same
`UserError`, whose message names the flag. `import ddlm` stays cheap: this module (and torch) loads on
the first use of `ddlm.load`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from tqdm import tqdm

from .batches import trim_padding
from .device import autocast, autocast_dtype, pick_device
from .domains import Domain, domain_from_config
from .errors import UserError
from .guidance.cfg import guided_network
from .guidance.particles import Steering
from .guidance.predictor import predictor_network
from .guidance.remask import Remasking
from .guidance.resampling import SCHEMES, TRIGGERS
from .guidance.rewards import Reward, parse_reward
from .infill import Template, arrangement_nll, choose_arrangements
from .ordering import order_policy
from .registry import Registry
from .run import LoadedRun, load_run
from .sampling import STEP_RULES, SampleSpec, sample_many


@dataclass
class Options:
    """How to sample: the flags of `ddlm sample` / `ddlm infill`, named as the flags are."""

    steps: int | None = None  # None: the run's own count (128, or a distilled student's)
    sampler: str = "tau-leaping"
    seed: int = 0
    batch_size: int = 64
    cache: bool = True
    kv_cache: bool = True
    order: str | None = None
    order_noise: float = 0.0
    threshold: float | None = None
    remask: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    length: int | tuple[int, int] | None = None  # residues (N or (MIN, MAX)); with semi_ar, text tokens
    semi_ar: bool = False
    reward: str | Callable | Reward | None = None  # a SPEC (guidance/rewards.py) or any callable
    particles: int = 1
    reward_temperature: float = 1.0
    resample: str = "ess"
    resampler: str = "systematic"
    pick: str = "draw"  # or "best": the particle with the highest reward
    remask_rate: float = 0.0
    condition: str | None = None  # classifier-free guidance towards this label (a run trained with labels)
    cfg: float | None = None  # its strength gamma (1: the conditional model)
    predictor: str | Path | None = None  # predictor guidance: a `ddlm train-predictor` folder
    target: str | None = None  # the predictor's label to steer towards
    guidance: float | None = None  # its strength gamma (1: p(x | target) with an exact predictor)
    guide_approx: str | None = None  # exact or taylor

    @classmethod
    def from_flags(cls, args) -> Options:
        """The options a command's parsed flags hold, by the flags' names (`--no-cache` is cache=False);
        an option the command has no flag for keeps its default."""
        flags = vars(args)
        found = {f.name: flags[f.name] for f in fields(cls) if f.name in flags}
        for negative, name in (("no_cache", "cache"), ("no_kv_cache", "kv_cache")):
            if negative in flags:
                found[name] = not flags[negative]
        return cls(**found)

    def lengths(self) -> tuple[int, int] | None:
        if self.length is None or isinstance(self.length, tuple):
            return self.length
        return (self.length, self.length)


@dataclass
class Samples:
    """What a sampling call returns: decoded texts, whether each is well formed, the token ids, the cost
    (the largest number of network evaluations one sample received, all its particles together; the
    seconds of sampling; under predictor guidance the predictor's forward passes and the sequences they
    read per sample) and, with a reward, each returned sample's reward."""

    texts: list[str]
    valid: list[bool]
    ids: torch.Tensor
    nfe: int
    seconds: float
    rewards: list[float] | None = None
    particles: int = 1
    gap_lengths: list[list[int]] | None = None
    predictor: dict | None = None  # {"calls", "inputs_per_sample"} under predictor guidance

    def summary(self) -> dict:
        """The JSON object `ddlm sample --json` prints."""
        out = {"samples": self.texts, "nfe": self.nfe, "seconds": self.seconds, "valid": self.valid}
        out["sequences_per_second"] = len(self.texts) / self.seconds if self.seconds > 0 else None
        if self.predictor is not None:
            out["predictor"] = self.predictor
        if self.rewards is not None:
            out.update(rewards=self.rewards, particles=self.particles)
        if self.gap_lengths is not None:
            out["gap_lengths"] = self.gap_lengths
        return out


@dataclass
class Session:
    """A trained run, its data and where and how it runs: what every command after training starts from."""

    loaded: LoadedRun
    domain: Domain
    device: torch.device
    amp: torch.dtype | None

    @classmethod
    def start(cls, run: str | Path, device: str = "auto", precision: str = "auto") -> Session:
        device = pick_device(device)
        loaded = load_run(run, device=device)
        domain = domain_from_config(loaded.config.data, Path(run))
        return cls(loaded, domain, device, autocast_dtype(precision, device))

    def sample(
        self, n: int, spec: SampleSpec, seed: int, quiet: bool, lengths: tuple[int, int] | None = None
    ) -> tuple[torch.Tensor, int, float]:
        """(ids [n, L], largest nfe, seconds), with a progress bar on stderr. Records get their length
        first (the domain's frame; `lengths` the user's range), unless the spec grows text past the window."""
        if not spec.semi_ar_length:
            spec = self.domain.framed(spec, self.loaded.net, n, seed, lengths)
        bar = tqdm(total=n, disable=quiet, file=sys.stderr, unit="seq", dynamic_ncols=True)
        try:
            loaded = self.loaded
            net, objective, length = loaded.net, loaded.objective, self.domain.length
            return sample_many(
                net, objective, n, length, spec, seed=seed, device=self.device, amp=self.amp, progress=bar
            )
        finally:
            bar.close()


def registered(registry: Registry, name: str, flag: str):
    """The class `name` of a registry, or a UserError naming the flag and the choices."""
    if name not in registry:
        raise UserError(f"{flag} {name}: unknown {registry.concept}; use one of {', '.join(registry.names())}")
    return registry[name]


def check_range(value, low: float, high: float, flag: str, low_open: bool = False, whole: bool = False) -> None:
    """A UserError naming the flag unless value is a finite number (a whole one if `whole`) with
    low (<) <= value <= high: what the CLI's parsers check, for the Python API's keywords."""
    number = isinstance(value, int) if whole else isinstance(value, int | float)
    finite = number and not isinstance(value, bool) and (isinstance(value, int) or math.isfinite(value))
    if not (finite and (low < value if low_open else low <= value) and value <= high):
        kind = "a whole number" if whole else "a number"
        raise UserError(f"{flag} {value}: give {kind} in {'(' if low_open else '['}{low}, {high}]")


def sample_spec(session: Session, options: Options, animate: bool = False) -> SampleSpec:
    """The sampling options as a spec, checked against the run (its objective refuses what it cannot do)."""
    for value, flag in (
        (1 if options.steps is None else options.steps, "--steps"),
        (options.batch_size, "--batch-size"),
    ):
        check_range(value, 1, math.inf, flag, whole=True)
    check_range(options.temperature, 0, 100, "--temperature", low_open=True)
    check_range(options.top_p, 0, 1, "--top-p", low_open=True)
    spec = SampleSpec(
        steps=options.steps or session.loaded.config.sampling_steps,
        rule=registered(STEP_RULES, options.sampler, "--sampler")(),
        use_cache=options.cache,
        kv_cache=options.kv_cache,
        batch_size=options.batch_size,
        temperature=options.temperature,
        top_p=options.top_p,
    )
    spec.order = order_policy(options.order, options.order_noise, options.remask, options.threshold)
    if options.semi_ar:
        lengths = options.lengths()
        if lengths is None or lengths[0] != lengths[1]:
            raise UserError("--semi-ar needs --length N, the tokens to generate")
        if not session.domain.supports_semi_ar:
            raise UserError(
                f"--semi-ar: {session.domain.name} records have fixed start and end markers; use a text run"
            )
        spec.semi_ar_length = lengths[0]
    refusal = session.loaded.objective.sampling_refusal(spec, animate=animate)
    if refusal is not None:
        raise UserError(refusal)
    return steered_spec(session, spec, options, animate)


def steered_spec(session: Session, spec: SampleSpec, options: Options, animate: bool = False) -> SampleSpec:
    """The spec with its particles (`spec.guide`) when the options ask for a reward, particles or
    remasking; unchanged otherwise."""
    if options.reward is None and options.particles == 1 and not options.remask_rate and options.pick == "draw":
        return spec
    if options.pick not in ("draw", "best"):
        raise UserError(f"--pick {options.pick}: use draw (from the final weights) or best (the highest reward)")
    reward = None if options.reward is None else reward_of(session, options.reward)
    steering = Steering(
        reward=None if reward is None else ids_reward(session.domain, reward),
        particles=options.particles,
        temperature=options.reward_temperature,
        trigger=registered(TRIGGERS, options.resample, "--resample")(),
        scheme=registered(SCHEMES, options.resampler, "--resampler")(),
        pick_best=options.pick == "best",
        remask=Remasking(options.remask_rate) if options.remask_rate else None,
    )
    if animate:
        raise UserError(
            "--animate shows plain sampling; it does not combine with --reward, --particles or --remask-rate"
        )
    refusal = steering.refusal(session.loaded.objective, spec)
    if refusal is not None:
        raise UserError(refusal)
    return replace(spec, guide=steering)


def reward_of(session: Session, reward) -> Reward:
    """The reward `reward` names (a SPEC or a callable), checked against the run's kind of data."""
    reward = parse_reward(reward)
    refusal = reward.refusal(session.domain.name)
    if refusal is not None:
        raise UserError(refusal)
    return reward


def ids_reward(domain: Domain, reward: Reward) -> Callable[[torch.Tensor], torch.Tensor]:
    """The reward of token ids: decoded by the domain, then scored."""
    return lambda ids: reward(domain.decode(ids.cpu())[0])


def infill_spec(session: Session, spec: SampleSpec, template: Template, n: int, seed: int):
    """(spec, gap lengths per sample or None): the template's residues held, its gaps free. When a gap's
    length is a range, the model scores every arrangement and each sample draws one (see infill.py)."""
    domain, loaded = session.domain, session.loaded
    arrangements = template.arrangements(domain.max_residues)
    clamp, values = domain.template_frames(template, arrangements)
    allowed = domain.residue_tokens()
    if len(arrangements) == 1:
        return replace(spec, clamp=clamp[0], clamp_values=values[0], allowed=allowed), None
    if not loaded.objective.any_order:
        raise UserError(
            "--template: a gap of a range of lengths needs a masked diffusion run to score it in any order "
            f"(sedd or mdlm, absorbing), not --objective {loaded.config.objective}; give each gap one length, "
            "e.g. _{5}"
        )
    gen = torch.Generator(session.device).manual_seed(seed)
    with autocast(session.device, session.amp):
        nll = arrangement_nll(loaded.net, loaded.objective, clamp.to(session.device), values.to(session.device), gen)
    chosen = choose_arrangements(nll.cpu(), n, torch.Generator().manual_seed(seed)).tolist()
    gap_lengths = [list(arrangements[i]) for i in chosen]
    return replace(spec, clamp=clamp[chosen], clamp_values=values[chosen], allowed=allowed), gap_lengths


def guided(session: Session, options: Options) -> Session:
    """The session whose network the options steer: classifier-free guidance right around the network
    (it passes the label), predictor guidance around that; the session itself when neither is asked for."""
    if options.cfg is not None:
        check_range(options.cfg, 0, math.inf, "--cfg")
    net = guided_network(session.loaded, options.condition, options.cfg)
    net = predictor_network(replace(session.loaded, net=net), options)
    return session if net is session.loaded.net else replace(session, loaded=replace(session.loaded, net=net))


def draw_samples(session: Session, n: int, options: Options, template: str | None = None, quiet: bool = True):
    """n samples as the options say (from `template`, when infilling): what `ddlm sample` and `ddlm
    infill` print and what `Model.sample` and `Model.infill` return."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"--n {n}: give a whole number of samples, at least 1")
    session = guided(session, options)
    if options.reward is not None:  # parsed once: a py: module imported, an HMM file read, once
        options = replace(options, reward=reward_of(session, options.reward))
    spec, gap_lengths = sample_spec(session, options), None
    if template is not None:
        if options.length is not None:
            raise UserError("--length: an infilling template fixes the length; write gaps as _{a,b} instead")
        spec, gap_lengths = infill_spec(session, spec, session.domain.template(template), n, options.seed)
    ids, nfe, seconds = session.sample(n, spec, options.seed, quiet, options.lengths())
    texts, valid = session.domain.decode(ids)
    rewards = None if options.reward is None else options.reward(texts).tolist()
    return Samples(texts, valid, ids, nfe, seconds, rewards, options.particles, gap_lengths, predictor_cost(session, n))


def predictor_cost(session: Session, n: int) -> dict | None:
    """The predictor's forward passes and the sequences they read per sample, under predictor guidance."""
    net = session.loaded.net
    if not hasattr(net, "predictor_inputs"):
        return None
    return {"calls": net.predictor_calls, "inputs_per_sample": net.predictor_inputs / n}


@torch.inference_mode()
def sequence_bits(net, objective, ids: torch.Tensor, time_samples: int, seed: int, device, batch_size: int = 64):
    """[N] the bound on -log2 p(x) of each row, in bits: evaluate/likelihood.py's estimate (the objective's
    `bound_at` at `time_samples` stratified draws, plus -log p(n) for a record's length) kept per
    sequence instead of summed; float32 and float64 sums, as `ddlm eval` does by default."""
    objective = objective.for_evaluation()
    K = 1 if objective.bound == "exact" else max(time_samples, 1)
    pad_id = getattr(getattr(net, "cfg", None), "pad_id", None)
    gen = torch.Generator(device).manual_seed(seed)
    out = []
    for start in range(0, len(ids), max(1, batch_size // K)):
        x0 = ids[start : start + max(1, batch_size // K)].to(device)
        if pad_id is not None:  # the network never sees padding: the batch's trailing padding can go
            x0 = trim_padding(x0, pad_id, objective.length_multiple)
        u = torch.rand(len(x0), K, generator=gen, device=device, dtype=torch.float64)
        strata = ((torch.arange(K, device=device) + u) / K).flatten()
        xs = x0.repeat_interleave(K, 0)
        losses = objective.bound_at(net, xs, strata, generator=gen) + objective.length_nll(net, xs)
        out.append(losses.double().view(len(x0), K).mean(1).cpu())
    return torch.cat(out) / math.log(2)


def encode_records(domain: Domain, sequences: list[str]) -> torch.Tensor:
    """[N, L] ids of the sequences as the run's records: framed by markers (proteins), or exactly one
    window of tokens each (Sudoku's 81 digits, a text window)."""
    if isinstance(sequences, str) or not len(sequences):
        raise UserError("score: give a list of one or more sequences")
    tok = domain.tokenizer()
    if getattr(tok, "markers", False):
        try:
            return tok.encode_padded(list(sequences), domain.length)
        except UserError as e:
            raise UserError(f"score: {e}") from None
    rows = []
    for i, text in enumerate(sequences):
        try:
            row = tok.encode(text)
        except UserError as e:
            raise UserError(f"score: sequence {i}: {e}") from None
        if len(row) != domain.length:
            raise UserError(f"score: sequence {i} is {len(row)} tokens; this {domain.name} run scores {domain.length}")
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long)


class Model:
    """A trained run (`ddlm.load`): `sample`, `infill` and `score`."""

    def __init__(self, session: Session):
        self.session = session

    @property
    def config(self):
        return self.session.loaded.config

    def sample(self, n: int = 16, *, progress: bool = False, **options) -> Samples:
        """n samples; options as `ddlm sample`'s flags (`Options`), e.g. steps=64, order="top-margin",
        length=(90, 110), reward="charge" or reward=callable, particles=8, reward_temperature=0.5."""
        return draw_samples(self.session, n, Options(**options), quiet=not progress)

    def infill(self, template: str, n: int = 4, *, progress: bool = False, **options) -> Samples:
        """n fillings of `template` (residues, '_' and '_{a,b}' gaps); options as `sample`'s."""
        return draw_samples(self.session, n, Options(**options), template=template, quiet=not progress)

    def score(self, sequences: list[str], *, time_samples: int = 8, seed: int = 0, batch_size: int = 64) -> list[float]:
        """Each sequence's bound on -log2 p(x), in bits (`ddlm eval`'s estimate, per sequence: the exact
        NLL for AR, the NELBO averaged over `time_samples` stratified draws for diffusion). Divide by
        len(sequence) + 1 (the end marker) for bits per token of a protein record."""
        check_range(time_samples, 1, math.inf, "time_samples", whole=True)
        ids = encode_records(self.session.domain, sequences)
        loaded = self.session.loaded
        bits = sequence_bits(loaded.net, loaded.objective, ids, time_samples, seed, self.session.device, batch_size)
        return bits.tolist()

    def __repr__(self) -> str:
        run = self.session.loaded
        return f"ddlm.Model({str(run.run_dir)!r}: {run.config.objective}, {self.session.domain.name})"


def load(run: str | Path, *, device: str = "auto", precision: str = "auto") -> Model:
    """The newest good checkpoint of a run directory (EMA weights), ready to sample, infill and score."""
    return Model(Session.start(run, device, precision))


__all__ = ["Model", "Options", "Samples", "load"]
