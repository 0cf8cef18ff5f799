"""`ddlm sample` and `ddlm infill`: a trained run -> a sampling spec -> samples -> FASTA or JSON."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

from ..data.fasta import write_fasta
from ..device import autocast, autocast_dtype, pick_device
from ..domains import Domain, domain_from_config
from ..errors import UserError
from ..infill import Template, arrangement_nll, choose_arrangements
from ..plots import denoising_gif
from ..run import LoadedRun, load_run
from ..sampling import STEP_RULES, SampleSpec, generate, sample_many, spec_clamp
from .args import add_sampling_arguments, length_range, log, order_policy


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


def cmd_sample(args) -> int:
    session = Session.open(args)
    spec = sample_spec(args, session)
    if args.animate:
        write_animation(args, session, spec)
    return emit_samples(args, session, spec)


def cmd_infill(args) -> int:
    session = Session.open(args)
    spec = sample_spec(args, session)
    spec, gap_lengths = infill_spec(session, spec, session.domain.template(args.template), args.n, args.seed)
    return emit_samples(args, session, spec, gap_lengths)


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


def sample_spec(args, session: Session) -> SampleSpec:
    """The sampling flags, checked against the run (its objective refuses what it cannot do)."""
    spec = SampleSpec(
        steps=args.steps or session.loaded.config.sampling_steps,
        rule=STEP_RULES[args.sampler](),
        use_cache=not args.no_cache,
        kv_cache=not args.no_kv_cache,
        batch_size=args.batch_size,
        temperature=args.temperature,
        top_p=args.top_p,
    )
    spec.order = order_policy(args.order, args.order_noise, args.remask, args.threshold)
    if getattr(args, "semi_ar", False):
        if args.length is None or args.length[0] != args.length[1]:
            raise UserError("--semi-ar needs --length N, the tokens to generate")
        if not session.domain.supports_semi_ar:
            raise UserError(
                f"--semi-ar: {session.domain.name} records have fixed start and end markers; use a text run"
            )
        spec.semi_ar_length = args.length[0]
    refusal = session.loaded.objective.sampling_refusal(spec, animate=bool(getattr(args, "animate", None)))
    if refusal is not None:
        raise UserError(refusal)
    return spec


def emit_samples(args, session: Session, spec: SampleSpec, gap_lengths: list | None = None) -> int:
    ids, nfe, seconds = session.sample(args.n, spec, args.seed, args.quiet, getattr(args, "length", None))
    texts, valid = session.domain.decode(ids)
    if args.json:
        result = {"samples": texts, "nfe": nfe, "seconds": seconds, "valid": valid}
        if gap_lengths is not None:
            result["gap_lengths"] = gap_lengths
        print(json.dumps(result))
        return 0
    names = [f"sample_{i} valid={v} nfe<={nfe}" for i, v in enumerate(valid)]
    if gap_lengths is not None:
        names = [f"{name} gaps={','.join(map(str, g))}" for name, g in zip(names, gap_lengths, strict=True)]
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
    loaded, n, length = session.loaded, min(args.n, 8), session.domain.length
    spec = session.domain.framed(spec, loaded.net, n, args.seed, args.length)
    clamp, values = spec_clamp(spec, 0, n, session.device)
    gen = torch.Generator(session.device).manual_seed(args.seed)
    with autocast(session.device, session.amp):
        result = generate(
            loaded.net,
            loaded.objective,
            n,
            length,
            spec,
            clamp=clamp,
            clamp_values=values,
            generator=gen,
            device=session.device,
            keep_history=True,
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
    s.add_argument(
        "--length",
        type=length_range,
        metavar="N|MIN:MAX",
        help="proteins: residues per sample, or a range within which the model's p(n) is renormalised; "
        "with --semi-ar: text tokens to generate",
    )
    s.set_defaults(func=cmd_sample)

    i = sub.add_parser(
        "infill",
        help="fill the '_' positions of a template",
        description="Sample the '_' positions of --template; every other position is kept as given. A gap "
        "'_{a,b}' takes the length the model finds likely given the rest (--json reports gap_lengths).",
    )
    add_sampling_arguments(i, 4)
    i.add_argument(
        "--template",
        required=True,
        help="residues with '_' at each position to fill, and '_{a,b}' for a gap of a to b residues whose length "
        "the model chooses, e.g. MKV__LL_{3,8}GGS",
    )
    i.set_defaults(func=cmd_infill)
