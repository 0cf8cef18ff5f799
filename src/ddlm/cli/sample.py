"""`ddlm sample` and `ddlm infill`: a trained run -> a sampling spec -> samples -> FASTA or JSON."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..data.fasta import write_fasta
from ..device import autocast, autocast_dtype, pick_device
from ..domains import Domain, domain_from_config
from ..errors import UserError
from ..ordering import ORDERS
from ..plots import denoising_gif
from ..run import LoadedRun, load_run
from ..sampling import STEP_RULES, SampleSpec, generate, sample_many
from .args import add_sampling_arguments, log, positive_int


@dataclass
class Session:
    """A trained run, its data and where and how it runs: what every command after training starts from."""

    loaded: LoadedRun
    domain: Domain
    device: torch.device
    amp: torch.dtype | None

    @classmethod
    def open(cls, args) -> Session:
        device = pick_device(args.device)
        loaded = load_run(args.run, device=device)
        domain = domain_from_config(loaded.config.data, Path(args.run))
        return cls(loaded, domain, device, autocast_dtype(args.precision, device))

    def sample(self, n: int, spec: SampleSpec, seed: int, quiet: bool) -> tuple[torch.Tensor, int, float]:
        """(ids [n, L], largest nfe, seconds), with a progress bar on stderr."""
        bar = tqdm(total=n, disable=quiet, file=sys.stderr, unit="seq", dynamic_ncols=True)
        try:
            loaded = self.loaded
            net, objective, length = loaded.net, loaded.objective, self.domain.length
            return sample_many(
                net, objective, n, length, spec, seed=seed, device=self.device, amp=self.amp, progress=bar
            )
        finally:
            bar.close()


def cmd_sample(args) -> int:
    session = Session.open(args)
    spec = sample_spec(args, session)
    if args.animate:
        write_animation(args, session, spec)
    return emit_samples(args, session, spec)


def cmd_infill(args) -> int:
    session = Session.open(args)
    spec = sample_spec(args, session)
    spec.clamp, spec.clamp_values, spec.allowed = session.domain.template(args.template)
    return emit_samples(args, session, spec)


def sample_spec(args, session: Session) -> SampleSpec:
    """The sampling flags, checked against the run (its objective refuses what it cannot do)."""
    spec = SampleSpec(
        steps=args.steps, rule=STEP_RULES[args.sampler](), use_cache=not args.no_cache, batch_size=args.batch_size
    )
    order = "top-prob" if args.remask and args.order is None else args.order  # RDM re-ranks by confidence
    if order is not None:
        spec.order = ORDERS[order](noise=args.order_noise, remask=args.remask)
    if getattr(args, "semi_ar", False) or getattr(args, "length", None):
        if not (args.semi_ar and args.length):
            raise UserError("--semi-ar and --length N go together")
        if not session.domain.supports_semi_ar:
            raise UserError(
                f"--semi-ar: {session.domain.name} records have fixed start and end markers; use a text run"
            )
        spec.semi_ar_length = args.length
    refusal = session.loaded.objective.sampling_refusal(spec, animate=bool(getattr(args, "animate", None)))
    if refusal is not None:
        raise UserError(refusal)
    return spec


def emit_samples(args, session: Session, spec: SampleSpec) -> int:
    ids, nfe, seconds = session.sample(args.n, spec, args.seed, args.quiet)
    texts, valid = session.domain.decode(ids)
    if args.json:
        print(json.dumps({"samples": texts, "nfe": nfe, "seconds": seconds, "valid": valid}))
        return 0
    names = [f"sample_{i} valid={v} nfe<={nfe}" for i, v in enumerate(valid)]
    if args.out:
        write_fasta(args.out, names, texts)
        log(
            f"wrote {len(texts)} sequences to {args.out} ({nfe} network evaluations per sequence at most, "
            f"{seconds:.1f} s)"
        )
    else:
        for name, text in zip(names, texts, strict=True):
            print(f">{name}\n{text}")
    return 0


def write_animation(args, session: Session, spec: SampleSpec) -> None:
    """A GIF of the first (at most 8) samples being denoised, step by step."""
    loaded = session.loaded
    gen = torch.Generator(session.device).manual_seed(args.seed)
    with autocast(session.device, session.amp):
        n, length = min(args.n, 8), session.domain.length
        result = generate(
            loaded.net, loaded.objective, n, length, spec, generator=gen, device=session.device, keep_history=True
        )
    alphabet = getattr(session.domain.tokenizer(), "alphabet", "")
    history = [h.cpu() for h in result.history]
    path = denoising_gif(history, Path(args.animate), alphabet, loaded.objective.vocab_size)
    log(f"wrote the denoising animation to {path}")


def add_parsers(sub) -> None:
    s = sub.add_parser("sample", help="sample sequences from a trained run")
    add_sampling_arguments(s, 16)
    s.add_argument("--semi-ar", action="store_true", help="grow text past the model's window, window by window")
    s.add_argument("--animate", metavar="GIF", help="also write a GIF of the first 8 samples being denoised")
    s.add_argument("--length", type=positive_int, help="with --semi-ar: tokens to generate")
    s.set_defaults(func=cmd_sample)

    i = sub.add_parser(
        "infill",
        help="fill the '_' positions of a template",
        description="Sample the '_' positions of --template; every other position is kept as given.",
    )
    add_sampling_arguments(i, 4)
    i.add_argument("--template", required=True, help="residues with '_' at each position to fill, e.g. MKV__LL_A")
    i.set_defaults(func=cmd_infill)
