"""Steering text towards a word: "the story contains word W", by reward-guided particles (issue 26).

    python scripts/text_guidance.py RUN --judge AR_RUN --words happy,park,friends,smiled,home \
        [--n 50] [--steps 64] [--particles 16] [--reward-temperature 0.1] [--pick best] [--json FILE]

RUN is a masked diffusion run on a text set (characters or BPE), AR_RUN an AR run trained on the same
text, the judge of generative perplexity: gen-ppl = 2^(sum of the judge's bits over the samples /
their tokens), exact (the AR model's own likelihood), read on the sampler's own tokens (the two runs
must share a tokenizer). Each word's reward is `regex:\\bW\\b` (1 when the whole word occurs, else
0); the same test scores the samples, so the hit rate is measured by the scorer the particles were
guided by, which for a regular expression is the property itself. One unguided batch (the same
seed) gives every word's base rate.

Rows: unguided, then one per word. Columns: the word's hit rate unguided and guided (+- binomial
s.e.), gen-ppl and its ratio to unguided, the mean unigram entropy of a sample's tokens (bits; a
degenerate sampler that repeats the word would show here), network calls per sample (all particles)
and sequences per second on this machine's threads (printed with the CPU's flags).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import torch

import ddlm
from ddlm.device import cpu_vector_flags
from ddlm.evaluate.text_quality import generative_perplexity, unigram_entropy


def hit_rate(texts: list[str], word: str) -> tuple[float, float]:
    """(fraction of texts that contain `word` as a whole word, its binomial s.e.)."""
    pattern = re.compile(rf"\b{re.escape(word)}\b")
    rate = sum(bool(pattern.search(t)) for t in texts) / len(texts)
    return rate, math.sqrt(rate * (1 - rate) / len(texts))


def gen_ppl(judge: ddlm.Model, samples: ddlm.Samples) -> float:
    """2^(judge's bits per token) over all the samples (the judge reads the sampler's token ids: the two
    runs' tokenizers are checked to be one)."""
    loaded = judge.session.loaded
    return generative_perplexity(loaded.net, loaded.objective, samples.ids)


def draw(model: ddlm.Model, args, **options) -> ddlm.Samples:
    return model.sample(args.n, steps=args.steps, seed=args.seed, batch_size=args.n, **options)


def row(name: str, samples: ddlm.Samples, judge: ddlm.Model, words: list[str]) -> dict:
    return {
        "mode": name,
        "n": len(samples.texts),
        "hits": {w: hit_rate(samples.texts, w) for w in words},
        "gen_ppl": gen_ppl(judge, samples),
        "entropy_bits": unigram_entropy(samples.ids),
        "nfe": samples.nfe,
        "seq_per_s": len(samples.texts) / samples.seconds,  # the sampling alone
        "examples": samples.texts[:3],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--judge", required=True, help="an AR run trained on the same text")
    parser.add_argument("--words", default="happy,park,friends,smiled,home")
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--particles", type=int, default=16)
    parser.add_argument("--reward-temperature", type=float, default=0.1)
    parser.add_argument("--pick", default="best", choices=["best", "draw"])
    parser.add_argument("--remask-rate", type=float, default=0.0)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    words = args.words.split(",")
    model, judge = ddlm.load(args.run), ddlm.load(args.judge)
    if model.session.domain.tokenizer().alphabet != judge.session.domain.tokenizer().alphabet:
        raise SystemExit(f"{args.judge} and {args.run} tokenize differently: the judge cannot read the samples")
    rows = [row("unguided", draw(model, args), judge, words)]
    print(f"unguided: gen-ppl {rows[0]['gen_ppl']:.2f}", file=sys.stderr, flush=True)
    for word in words:
        options = dict(reward=rf"regex:\b{word}\b", particles=args.particles, pick=args.pick)
        options.update(reward_temperature=args.reward_temperature, remask_rate=args.remask_rate)
        rows.append(row(f"particles, '{word}'", draw(model, args, **options), judge, [word]))
        last = rows[-1]
        print(f"{word}: {last['hits'][word][0]:.0%}, gen-ppl {last['gen_ppl']:.2f}", file=sys.stderr, flush=True)
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    settings.update(threads=torch.get_num_threads(), cpu_flags=cpu_vector_flags())
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))
    print(f"{settings}\n")
    print("| word | hit rate unguided | hit rate guided | gen-ppl guided (x unguided) | entropy | nfe | seq/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    base = rows[0]
    print(f"| (unguided) | | | {base['gen_ppl']:.2f} | {base['entropy_bits']:.2f} | {base['nfe']} |", end="")
    print(f" {base['seq_per_s']:.2f} |")
    for word, r in zip(words, rows[1:], strict=True):
        (b, bse), (g, gse) = base["hits"][word], r["hits"][word]
        ratio = r["gen_ppl"] / base["gen_ppl"]
        print(
            f"| {word} | {b:.0%} +- {bse:.0%} | {g:.0%} +- {gse:.0%} | {r['gen_ppl']:.2f} ({ratio:.2f}x) | "
            f"{r['entropy_bits']:.2f} | {r['nfe']} | {r['seq_per_s']:.2f} |"
        )


if __name__ == "__main__":
    main()
