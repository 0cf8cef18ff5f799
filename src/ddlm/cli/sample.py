"""`ddlm sample` and `ddlm infill`: a trained run -> a sampling spec -> samples -> FASTA or JSON."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import api
from ..data.fasta import write_fasta
from ..device import autocast
from ..guidance.cfg import add_cfg_arguments
from ..plots import denoising_gif
from ..sampling import SampleSpec, generate, spec_clamp
from .args import add_sampling_arguments, length_range, log
from .predictor import add_predictor_arguments


class Session(api.Session):
    """The run a command names (`args.run`, `--device`, `--precision`); see api.Session."""

    @classmethod
    def open(cls, args) -> Session:
        return cls.start(args.run, args.device, args.precision)


def options(args) -> api.Options:
    """The sampling flags as the Python API's options (the same names, `--no-cache` as cache=False)."""
    return api.Options.from_flags(args)


def cmd_sample(args) -> int:
    session = Session.open(args)
    if args.animate:
        steered = api.guided(session, options(args))
        write_animation(args, steered, api.sample_spec(steered, options(args), animate=True))
    return emit_samples(args, api.draw_samples(session, args.n, options(args), quiet=args.quiet))


def cmd_infill(args) -> int:
    session = Session.open(args)
    return emit_samples(args, api.draw_samples(session, args.n, options(args), args.template, quiet=args.quiet))


def emit_samples(args, samples: api.Samples) -> int:
    """One JSON object (--json), a FASTA file (--out) or FASTA on stdout."""
    if args.json:
        print(json.dumps(samples.summary()))
        return 0
    nfe = samples.nfe
    names = [f"sample_{i} valid={v} nfe<={nfe}" for i, v in enumerate(samples.valid)]
    if samples.rewards is not None:
        names = [f"{name} reward={r:.6g}" for name, r in zip(names, samples.rewards, strict=True)]
    if samples.gap_lengths is not None:
        names = [f"{name} gaps={','.join(map(str, g))}" for name, g in zip(names, samples.gap_lengths, strict=True)]
    if args.out:
        write_fasta(args.out, names, samples.texts)
        guide = samples.predictor
        guide = f", the predictor read {guide['inputs_per_sample']:,.0f} sequences per sample" if guide else ""
        log(
            f"wrote {len(samples.texts)} sequences to {args.out} ({nfe} network evaluations per sequence at most"
            f"{guide}, {samples.seconds:.1f} s)"
        )
    else:
        for name, text in zip(names, samples.texts, strict=True):
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


def add_guidance_arguments(p) -> None:
    """Classifier-free guidance (`--condition`, `--cfg`) and predictor guidance (`--predictor`, ...)."""
    add_cfg_arguments(p)
    add_predictor_arguments(p)


def add_parsers(sub) -> None:
    s = sub.add_parser("sample", help="sample sequences from a trained run")
    add_sampling_arguments(s, 16)
    add_guidance_arguments(s)
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
    add_guidance_arguments(i)
    i.add_argument(
        "--template",
        required=True,
        help="residues with '_' at each position to fill, and '_{a,b}' for a gap of a to b residues whose length "
        "the model chooses, e.g. MKV__LL_{3,8}GGS",
    )
    i.set_defaults(func=cmd_infill)
