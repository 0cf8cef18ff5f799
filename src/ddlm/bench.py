"""`ddlm bench`: how fast this machine trains and samples, against what its matrix units could do.

Everything is measured for the SEDD absorbing objective on protein-sized data (V = 24 real tokens
plus the mask, time conditioning off, so the sampler's cache is exact), on random token ids: only
speed matters here. The real code paths run: `Trainer.train_step` (bf16 autocast where `--precision`
says so) and `sampling.generate`. Beside them, in turn, a plain PyTorch network of the same shape and
precision (reference.py) trains and samples, and each figure is also reported as a ratio to it
(`train.vs_reference`, `sampling.uncached_vs_reference`, `sampling.cached_vs_reference`): ratios taken in
turn survive a shared machine that absolute figures do not.

Model FLOPs utilisation (PaLM appendix B, nanoGPT's `estimate_mfu`):

    FLOPs per trained token = 6 N + 12 n_layers L d_model

    6 N          every weight does one multiply-add (2 FLOPs) per token in the forward pass and two in
                 the backward pass (gradients with respect to its input and to itself). N counts the
                 non-embedding parameters: the token embedding is a table lookup, no multiply-adds;
                 the output head is a real matrix product and is counted.
    12 n_layers L d_model
                 attention scores Q K^T and the weighted sum A V cost 2 L d_model FLOPs each per token
                 and layer in the forward pass, three times that with the backward pass. The attention
                 is bidirectional, so the full L x L matrix is computed (no halving as for causal).

    MFU = achieved model FLOP/s / peak FLOP/s of the precision in use,

where the peak is this machine's own best square matrix product (fp32, or bf16 when bf16 autocast
is active). A sampling step is a forward pass only: 2 N + 4 n_layers L d_model FLOPs per token.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from .config import TrainConfig
from .device import (
    autocast_dtype,
    bf16_is_fast,
    cpu_supports_bf16,
    cpu_vector_flags,
    low_precision_copy,
    pick_device,
)
from .errors import UserError
from .networks import PRESETS, NetConfig, Transformer
from .objectives import ScoreEntropy
from .objectives.bd3lm import BlockDiffusion, generate_blocks
from .plots import plot_scaling
from .processes import Absorbing
from .reference import ReferenceNet, ReferenceTrainer, reference_sample
from .sampling import SampleSpec, TauLeaping, generate
from .schedules import LogLinear
from .train import Trainer

VOCAB = 24  # the protein tokenizer: 20 residues, X, and the start, end and padding markers
SAMPLING_STEPS = (128, 1024)
# the uncached network call against the reference's: this many steps a run, runs in turn, medians
REFERENCE_CALL_STEPS, REFERENCE_REPEATS = 32, 5
MATMUL_SIZES = (1024, 1536, 2048)
MIN_REPEATS = 3  # timed repetitions at least, whatever --seconds says: a best-of needs several
WARMUP_STEPS = 3  # the first steps pay for oneDNN kernel selection, allocator growth and lazy optimiser state
DATA_BATCHES = 8  # random records = this many batches, so the epoch permutation is not trivially one batch
# --scaling: long sequences get fewer rows so that one training step, or one network evaluation
# while sampling, stays at about the work of a default batch (cost is reported per token anyway)
SCALING_TRAIN_TOKENS = 32 * 256
SCALING_SAMPLE_TOKENS = 16 * 129


class Progress:
    """One line per stage on stderr (stdout carries only the table or the JSON object)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"bench [{time.perf_counter() - self.t0:6.1f} s] {msg}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock intervals measure the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- machine ----------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_flags(flags: list[str]) -> str:
    return f"({', '.join(flags) or 'no AVX2'})"


def cpu_description() -> str:
    """The CPU's model and its vector extensions, the line to print beside a speed figure."""
    return f"{cpu_model()} {describe_flags(cpu_vector_flags())}"


def machine_info(device: torch.device) -> dict:
    info = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_vector_flags(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
        "cpu_bf16": cpu_supports_bf16(),
        # other work on the machine skews every figure (two-thread runs slow down many-fold when a
        # core is taken), so the 1-minute load average at the start goes into the record
        "load_average": os.getloadavg()[0],
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def matmul_gflops(dtype: torch.dtype, device: torch.device, seconds: float, sizes=MATMUL_SIZES) -> dict:
    """Best GFLOP/s (2 n^3 FLOPs per n x n product) over square products of a few sizes.

    Each size gets an untimed warm-up product (kernel selection, weight packing, page faults) and
    then at least MIN_REPEATS timed ones within its share of `seconds`; the best single product is
    the peak, since slower ones were disturbed by something else (the matrix units' peak is what MFU
    divides by).
    """
    best, best_n, repeats = 0.0, 0, 0
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        c = torch.empty(n, n, device=device, dtype=dtype)
        torch.matmul(a, b, out=c)
        sync(device)
        deadline = time.perf_counter() + seconds / len(sizes)
        done = 0
        while done < MIN_REPEATS or time.perf_counter() < deadline:
            t0 = time.perf_counter()
            torch.matmul(a, b, out=c)
            sync(device)
            rate = 2 * n**3 / (time.perf_counter() - t0) / 1e9
            if rate > best:
                best, best_n = rate, n
            done += 1
        repeats += done
    return {"gflops": best, "size": best_n, "products": repeats}


# --- model ------------------------------------------------------------------------------------------


def non_embedding_parameters(net: Transformer) -> int:
    return net.num_parameters() - net.embed.weight.numel()


def train_flops_per_token(net: Transformer, length: int) -> float:
    """6 N + 12 n_layers L d_model (see the module docstring)."""
    cfg = net.cfg
    return 6 * non_embedding_parameters(net) + 12 * cfg.n_layers * length * cfg.d_model


def forward_flops_per_token(net: Transformer, length: int) -> float:
    """2 N + 4 n_layers L d_model: one third of a training step's FLOPs."""
    return train_flops_per_token(net, length) / 3


@dataclass
class Setup:
    """What every measurement shares: the objective, the network shape, device and precision."""

    objective: ScoreEntropy
    net_cfg: NetConfig
    device: torch.device
    precision: str
    amp: torch.dtype | None
    compile: bool = False  # ddlm's training step compiled (torch.compile); every new shape compiles once

    def new_trainer(self, run_dir: Path, batch: int, length: int) -> Trainer:
        """A fresh network and optimiser on random protein-sized data of `length` positions."""
        torch.manual_seed(0)
        net = Transformer(self.net_cfg)
        gen = torch.Generator().manual_seed(0)
        data = torch.randint(0, VOCAB, (DATA_BATCHES * batch, length), generator=gen)
        cfg = TrainConfig(batch_size=batch, precision=self.precision, compile=self.compile)
        # every position of random data is a real token: tokens = positions
        return Trainer(run_dir, self.objective, net, data, data[:1], count_positions, cfg, self.device)


def count_positions(ids: torch.Tensor) -> torch.Tensor:
    return torch.full(ids.shape[:1], ids.shape[1], dtype=torch.long)


def time_training(
    trainer: Trainer,
    length: int,
    seconds: float,
    warmup: int = WARMUP_STEPS,
    min_steps: int = MIN_REPEATS,
    between: Callable[[], None] | None = None,
) -> dict:
    """Mean wall time of `Trainer.train_step` after `warmup` untimed steps, over at least `min_steps`
    steps and `seconds` seconds. train_step ends with .item(), which waits for the device.

    The mean gives the throughput; the median is reported beside it because it shrugs off a step
    slowed by another process, so a large gap between the two says the machine was not quiet.
    `between`, if given, runs after every step (warm-up included) outside the timed intervals: the
    reference's step, so that both see the same state of the machine (see `measure_training`)."""
    for _ in range(warmup):
        trainer.train_step()
        trainer.step += 1  # as fit() does: the next batch, and the learning-rate warm-up moves on
        if between is not None:
            between()
    times: list[float] = []
    skipped = 0
    t0 = time.perf_counter()
    while len(times) < min_steps or time.perf_counter() - t0 < seconds:
        start = time.perf_counter()
        skipped += trainer.train_step() is None
        times.append(time.perf_counter() - start)
        trainer.step += 1
        if between is not None:
            between()
    steps = len(times)
    batch = trainer.cfg.batch_size
    step_s = sum(times) / steps
    return {
        "tokens_per_s": batch * length / step_s,
        "step_ms": 1e3 * step_s,
        "step_ms_median": 1e3 * statistics.median(times),
        "steps": steps,
        "skipped_steps": skipped,
        "batch_size": batch,
        "length": length,
    }


def time_sampling(
    setup: Setup, net: Transformer, n: int, length: int, steps: int, use_cache: bool, seed: int, progress=None
) -> dict:
    """One run of `generate` (tau-leaping) for n sequences: seconds, rates and nfe.

    nfe is the largest per-sequence count of network evaluations; `network_tokens` counts every
    position the network processed (sum over sequences of nfe x length), so `network_gflops` says how
    busy the matrix units were and the remainder of the time is the sampler's own per-step work.
    """
    gen = torch.Generator(setup.device).manual_seed(seed)
    sync(setup.device)
    t0 = time.perf_counter()
    spec = SampleSpec(steps=steps, rule=TauLeaping(), use_cache=use_cache)
    net = low_precision_copy(net, setup.amp)  # as `ddlm sample` does: weights cast once, no autocast
    with torch.inference_mode():
        result = generate(net, setup.objective, n, length, spec, generator=gen, device=setup.device, progress=progress)
    sync(setup.device)
    seconds = time.perf_counter() - t0
    network_tokens = int(result.nfe.sum()) * length
    return {
        "seconds": seconds,
        "samples_per_s": n / seconds,
        "sequences_per_minute": 60 * n / seconds,
        "tokens_per_s": n * length / seconds,
        "ms_per_step": 1e3 * seconds / steps,
        "nfe": int(result.nfe.max()),
        "network_tokens": network_tokens,
        "network_gflops": network_tokens * forward_flops_per_token(net, length) / seconds / 1e9,
    }


def warm_sampler(setup: Setup, net: Transformer, n: int, length: int) -> None:
    """A two-step run first, so the timed runs do not pay for first-call kernel selection."""
    time_sampling(setup, net, n, length, 2, use_cache=False, seed=0)


# bd3lm's key/value cache: long text (1024 characters) in blocks of 8, where every uncached call re-reads
# the whole sampled prefix; a few sequences keep the uncached run to seconds
BLOCK_LENGTH, BLOCK_SIZE, BLOCK_STEPS, BLOCK_SEQUENCES = 1024, 8, 256, 4


def measure_block_cache(setup: Setup, args, say: Progress) -> dict:
    """BD3-LM sampling (`generate_blocks`) of BLOCK_SEQUENCES x BLOCK_LENGTH tokens, with the sampled
    prefix's keys and values cached and without: seconds, and the speedup (the samples are the same)."""
    objective = BlockDiffusion(Absorbing(VOCAB), LogLinear(), block_size=BLOCK_SIZE)
    torch.manual_seed(0)
    cfg = NetConfig(*objective.net_vocab, BLOCK_LENGTH, positions="rotary", **PRESETS[args.preset])
    net = low_precision_copy(Transformer(cfg).to(setup.device).eval(), setup.amp)
    out: dict = {"length": BLOCK_LENGTH, "block": BLOCK_SIZE, "steps": BLOCK_STEPS, "sequences": BLOCK_SEQUENCES}
    for kv_cache in (True, False):
        name = "cached" if kv_cache else "uncached"
        say(
            f"bd3lm sampling: {BLOCK_SEQUENCES} x {BLOCK_LENGTH}, blocks of {BLOCK_SIZE}, "
            f"{BLOCK_STEPS} steps, {name} ..."
        )
        spec = SampleSpec(steps=BLOCK_STEPS, rule=TauLeaping(), kv_cache=kv_cache)
        gen = torch.Generator(setup.device).manual_seed(0)
        sync(setup.device)
        t0 = time.perf_counter()
        result = generate_blocks(
            net, objective, BLOCK_SEQUENCES, BLOCK_LENGTH, spec, generator=gen, device=setup.device
        )
        sync(setup.device)
        seconds = time.perf_counter() - t0
        out[name] = {
            "seconds": seconds,
            "nfe": int(result.nfe.max()),
            "tokens_per_s": BLOCK_SEQUENCES * BLOCK_LENGTH / seconds,
        }
        say(f"  {seconds:.2f} s, nfe {out[name]['nfe']}")
    out["kv_cache_speedup"] = out["uncached"]["seconds"] / out["cached"]["seconds"]
    return out


# --- the benchmark ----------------------------------------------------------------------------------


def peak_memory_mib(device: torch.device) -> dict:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB, macOS bytes
    out = {"rss": rss_bytes / 2**20}
    if device.type == "cuda":
        out["cuda_allocated"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def run_scaling(setup: Setup, args, say: Progress, run_dir: Path, plot: Path) -> dict:
    """Training step and cached-sampling cost against sequence length and against batch size."""

    def point(batch: int, length: int, sample_n: int) -> dict:
        trainer = setup.new_trainer(run_dir, batch, length)
        train = time_training(trainer, length, args.scaling_seconds, warmup=1, min_steps=2)
        net = trainer.ema_net
        warm_sampler(setup, net, sample_n, length)
        sampling = time_sampling(setup, net, sample_n, length, args.scaling_steps, use_cache=True, seed=1)
        sampling["sequences"] = sample_n
        say(
            f"  length {length:5d} batch {batch:3d}: train {train['tokens_per_s']:9.0f} tok/s "
            f"{train['step_ms']:8.1f} ms/step | sample {sample_n:3d} seq {sampling['seconds']:6.2f} s "
            f"({sampling['tokens_per_s']:.0f} tok/s)"
        )
        return {"length": length, "batch": batch, "train": train, "sampling": sampling}

    say(f"scaling: {args.scaling_steps}-step cached sampling, {args.scaling_seconds:g} s of training per point")
    by_length = []
    for length in args.scaling_lengths:
        batch = max(1, min(args.batch_size, SCALING_TRAIN_TOKENS // length))
        sample_n = max(1, min(args.sequences, SCALING_SAMPLE_TOKENS // length))
        by_length.append(point(batch, length, sample_n))
    by_batch = [point(batch, args.length, batch) for batch in args.scaling_batches]
    plot_scaling(by_length, by_batch, plot, args.length, args.scaling_steps)
    say(f"scaling plot: {plot}")
    return {
        "sampling_steps": args.scaling_steps,
        "seconds_per_point": args.scaling_seconds,
        "length": by_length,
        "batch": by_batch,
        "plot": str(plot),
        "peak_memory_mib": peak_memory_mib(setup.device),  # long sequences raise the high-water mark
    }


def run_bench(args, say: Progress) -> dict:
    """Peak matrix products, training throughput and MFU, sampling speed (cached and not), memory, and
    with `--scaling` the cost against length and batch: the whole of `ddlm bench` as one JSON-able dict."""
    if args.plot is not None and not args.scaling:
        raise UserError("--plot names the --scaling plot; add --scaling")
    setup = make_setup(args)
    result: dict = {"machine": machine_info(setup.device), "preset": args.preset}
    m = result["machine"]
    say(f"{m['cpu']}, {m['torch_threads']} torch threads, device {setup.device}, load average {m['load_average']:.2f}")
    if m["load_average"] > 0.5 * (m["cores"] or 1):
        say("warning: the machine is busy with other work; these figures will be low")
    result["matmul"] = measure_peaks(setup, args.seconds, say)
    result["peak_gflops"] = {k: v["gflops"] for k, v in result["matmul"].items()}
    with tempfile.TemporaryDirectory(prefix="ddlm-bench-") as tmp:
        run_dir = Path(tmp)
        trainer = setup.new_trainer(run_dir, args.batch_size, args.length)
        result["parameters"] = trainer.net.num_parameters()
        result["non_embedding_parameters"] = non_embedding_parameters(trainer.net)
        result["net"] = setup.net_cfg.to_dict()
        result["train"] = measure_training(setup, trainer, args, result["peak_gflops"], say)
        # sampling with the EMA weights, as `ddlm sample` would use them
        result["sampling"] = measure_sampling(setup, trainer.ema_net, args, say)
        result["sampling_sequences"] = args.sequences
        last = result["sampling"][str(SAMPLING_STEPS[-1])]
        result["cache_speedup"] = last["uncached"]["seconds"] / last["cached"]["seconds"]
        # memory high-water marks so far: the default configuration, before bd3lm's and --scaling's long
        # sequences. bd3lm's is in its own record: in bf16 its uncached run's 128 window lengths each leave
        # state behind in the bf16 matrix-product path (oneDNN; fp32 uses MKL's), ~5 MiB a length on
        # machine C, which would double the default run's figure
        result["peak_memory_mib"] = peak_memory_mib(setup.device)
        result["bd3lm_sampling"] = measure_block_cache(setup, args, say)
        result["bd3lm_sampling"]["peak_memory_mib"] = peak_memory_mib(setup.device)
        if args.scaling:
            if setup.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(setup.device)
            result["scaling"] = run_scaling(setup, args, say, run_dir, Path(args.plot or "bench_scaling.png"))
    return result


def make_setup(args) -> Setup:
    device = pick_device(args.device)
    objective = ScoreEntropy(Absorbing(VOCAB), LogLinear())
    vocab_in, vocab_out = objective.net_vocab
    max_len = max([args.length, *(args.scaling_lengths if args.scaling else [])])
    net_cfg = NetConfig(
        vocab_in, vocab_out, max_len, time_conditioning=False, positions="rotary", **PRESETS[args.preset]
    )
    amp = autocast_dtype(args.precision, device)
    return Setup(objective, net_cfg, device, args.precision, amp, args.compile)


def measure_peaks(setup: Setup, seconds: float, say: Progress) -> dict:
    """The machine's matrix-product peak for each precision the run might use."""
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if name == "bf16" and not (bf16_is_fast(setup.device) or setup.amp == torch.bfloat16):
            continue
        say(f"matmul peak {name} ...")
        peaks[name] = matmul_gflops(dtype, setup.device, seconds)
        say(f"  {peaks[name]['gflops']:.1f} GFLOP/s ({peaks[name]['size']}^2, {peaks[name]['products']} products)")
    return peaks


def measure_training(setup: Setup, trainer: Trainer, args, peaks: dict, say: Progress) -> dict:
    """ddlm's training step and the reference's (reference.py) on the same batches, one after the other
    in turn, so that both see the same state of a shared machine; `vs_reference` is the ratio of their
    median step times (above 1: ddlm is faster)."""
    precision = "bf16" if setup.amp == torch.bfloat16 else "fp32"
    say(f"training: batch {args.batch_size} x {args.length}, {precision}, ddlm and the reference in turn ...")
    reference = ReferenceTrainer(setup.net_cfg, setup.objective.process.mask_id, setup.amp, setup.device)
    ref_times: list[float] = []

    def reference_step() -> None:
        x0 = trainer.batches(trainer.step).to(setup.device)
        start = time.perf_counter()
        reference.step(x0)  # ends with .item(), which waits for the device
        ref_times.append(time.perf_counter() - start)

    train = time_training(trainer, args.length, args.seconds, between=reference_step)
    flops = train_flops_per_token(trainer.net, args.length)
    achieved = train["tokens_per_s"] * flops / 1e9
    train.update(precision=precision, flops_per_token=flops, achieved_gflops=achieved, mfu=achieved / peaks[precision])
    train["compiled"] = setup.compile
    timed = ref_times[WARMUP_STEPS:]
    ref_step_s = sum(timed) / len(timed)
    ref_tokens_per_s = args.batch_size * args.length / ref_step_s
    train["reference"] = {
        "tokens_per_s": ref_tokens_per_s,
        "step_ms": 1e3 * ref_step_s,
        "step_ms_median": 1e3 * statistics.median(timed),
        "steps": len(timed),
        "mfu": ref_tokens_per_s * flops / 1e9 / peaks[precision],
    }
    train["vs_reference"] = train["reference"]["step_ms_median"] / train["step_ms_median"]
    say(
        f"  {train['tokens_per_s']:.0f} tokens/s, {train['step_ms']:.1f} ms/step, MFU {train['mfu']:.1%}; "
        f"reference {ref_tokens_per_s:.0f} tokens/s: ddlm {train['vs_reference']:.2f}x"
    )
    return train


def measure_sampling(setup: Setup, net: Transformer, args, say: Progress) -> dict:
    """Tau-leaping at each of SAMPLING_STEPS, with and without the cache, then the uncached network call
    against the reference's (`compare_sampling_call`)."""
    warm_sampler(setup, net, args.sequences, args.length)
    sampling: dict = {}
    for steps in SAMPLING_STEPS:
        sampling[str(steps)] = {}
        for cached in (True, False):
            name = "cached" if cached else "uncached"
            say(f"sampling: {args.sequences} x {args.length}, {steps} steps, {name} ...")
            with tqdm(total=steps, disable=say.quiet, file=sys.stderr, unit="step", leave=False) as bar:
                r = time_sampling(setup, net, args.sequences, args.length, steps, cached, seed=steps, progress=bar)
            sampling[str(steps)][name] = r
            say(f"  {r['seconds']:.2f} s, nfe {r['nfe']}, {r['sequences_per_minute']:.1f} sequences/min")
    reference = compare_sampling_call(setup, net, args, say)
    sampling["reference"] = reference
    sampling["uncached_vs_reference"] = reference["reference_ms_per_call"] / reference["ms_per_call"]
    # the reference samples with one call per step, so its 1024 steps cost 1024 of its calls
    last = SAMPLING_STEPS[-1]
    reference_seconds = last * reference["reference_ms_per_call"] / 1e3
    sampling["cached_vs_reference"] = reference_seconds / sampling[str(last)]["cached"]["seconds"]
    say(
        f"  uncached call {sampling['uncached_vs_reference']:.2f}x the reference's; cached {last}-step sampling "
        f"{sampling['cached_vs_reference']:.1f}x the reference's {last} calls"
    )
    return sampling


def compare_sampling_call(setup: Setup, net: Transformer, args, say: Progress) -> dict:
    """Milliseconds per network call of ddlm's uncached sampler (`generate`, REFERENCE_CALL_STEPS steps,
    seconds / nfe: the sampler's own work included) and of `reference_sample` over as many steps, in
    turn, REFERENCE_REPEATS times each; medians."""
    n, length, steps = args.sequences, args.length, REFERENCE_CALL_STEPS
    say(f"sampling: {n} x {length}, {steps} uncached steps, ddlm and the reference in turn ...")
    torch.manual_seed(0)
    reference = ReferenceNet(setup.net_cfg).to(setup.device)
    mask_id = setup.objective.process.mask_id
    reference_sample(reference, n, length, 2, mask_id, setup.amp, device=setup.device)  # warm-up
    ddlm_ms, ref_ms = [], []
    for repeat in range(REFERENCE_REPEATS):
        r = time_sampling(setup, net, n, length, steps, use_cache=False, seed=repeat)
        ddlm_ms.append(1e3 * r["seconds"] / r["nfe"])
        gen = torch.Generator(setup.device).manual_seed(repeat)
        sync(setup.device)
        t0 = time.perf_counter()
        reference_sample(reference, n, length, steps, mask_id, setup.amp, generator=gen, device=setup.device)
        sync(setup.device)
        ref_ms.append(1e3 * (time.perf_counter() - t0) / steps)
    return {
        "steps": steps,
        "repeats": REFERENCE_REPEATS,
        "ms_per_call": statistics.median(ddlm_ms),
        "reference_ms_per_call": statistics.median(ref_ms),
    }


def reference_lines(r: dict) -> list[str]:
    """The table's lines for the reference (reference.py) at the same precision; none in older records."""
    t, sa = r["train"], r["sampling"]
    if "reference" not in t:
        return []
    ref, call = t["reference"], sa["reference"]
    return [
        f"reference nn.TransformerEncoder + AdamW, {t['precision']}: {ref['tokens_per_s']:,.0f} tokens/s "
        f"(median {ref['step_ms_median']:.1f} ms/step, MFU {ref['mfu']:.1%}): ddlm trains "
        f"{t['vs_reference']:.2f}x as fast (medians, steps in turn)",
        f"          uncached sampling call {call['ms_per_call']:.1f} ms against the reference's "
        f"{call['reference_ms_per_call']:.1f} ms: {sa['uncached_vs_reference']:.2f}x; cached "
        f"{SAMPLING_STEPS[-1]}-step sampling {sa['cached_vs_reference']:.1f}x the reference's one call a step",
    ]


def format_table(r: dict) -> str:
    m, t = r["machine"], r["train"]
    peaks = "   ".join(f"{k} {v:,.1f} GFLOP/s" for k, v in r["peak_gflops"].items())
    lines = [
        f"machine   {m['cpu']}"
        # older records have no flags
        + (f" {describe_flags(m['cpu_flags'])}" if "cpu_flags" in m else "")
        + f"; {m['cores']} cores, {m['torch_threads']} torch threads; torch {m['torch']}; "
        f"device {m['device']}"
        + (f" ({m['gpu']})" if "gpu" in m else "")
        # older records have no load average
        + (f"; load average {m['load_average']:.2f} at start" if "load_average" in m else ""),
        f"model     preset {r['preset']}: {r['parameters'] / 1e6:.2f}M parameters "
        f"({r['non_embedding_parameters'] / 1e6:.2f}M non-embedding); SEDD absorbing, {VOCAB} tokens + mask",
        f"peak      {peaks}   (best square matmul)",
        f"train     batch {t['batch_size']} x {t['length']}, {t['precision']}"
        f"{', compiled' if t.get('compiled') else ''}: {t['tokens_per_s']:,.0f} tokens/s, "
        f"{t['step_ms']:.1f} ms/step (median {t['step_ms_median']:.1f}), {t['achieved_gflops']:.1f} GFLOP/s, "
        f"MFU {t['mfu']:.1%} of the {t['precision']} peak",
        *reference_lines(r),
        "",
        f"sampling  tau-leaping, {r['sampling_sequences']} sequences of {t['length']} positions",
        f"  {'steps':>6} {'cache':>9} {'seconds':>9} {'seq/min':>9} {'samples/s':>10} {'nfe':>6} {'net GFLOP/s':>12}",
    ]
    for steps, by_cache in r["sampling"].items():
        if not steps.isdigit():  # the reference's figures, printed by reference_lines
            continue
        for name, s in by_cache.items():
            lines.append(
                f"  {steps:>6} {name:>9} {s['seconds']:9.2f} {s['sequences_per_minute']:9.1f} "
                f"{s['samples_per_s']:10.2f} {s['nfe']:6d} {s['network_gflops']:12.1f}"
            )
    lines.append(f"cache speedup at {SAMPLING_STEPS[-1]} steps: {r['cache_speedup']:.1f}x")
    if "bd3lm_sampling" in r:  # older records have none
        b = r["bd3lm_sampling"]
        lines.append(
            f"bd3lm     {b['sequences']} x {b['length']} tokens, blocks of {b['block']}, {b['steps']} steps: "
            f"key/value cache {b['cached']['seconds']:.2f} s, without {b['uncached']['seconds']:.2f} s "
            f"({b['kv_cache_speedup']:.1f}x)"
            # older records have no memory figure of their own
            + (f"; peak memory after it {b['peak_memory_mib']['rss']:,.0f} MiB" if "peak_memory_mib" in b else "")
        )
    mem = r["peak_memory_mib"]
    lines.append(
        f"peak memory: {mem['rss']:,.0f} MiB resident (training and tau-leaping sampling)"
        + (f", {mem['cuda_allocated']:,.0f} MiB CUDA allocated" if "cuda_allocated" in mem else "")
    )
    if "scaling" in r:
        sc = r["scaling"]
        lines += ["", f"scaling   training step and {sc['sampling_steps']}-step cached sampling (plot: {sc['plot']})"]
        lines.append(
            f"  {'length':>6} {'batch':>5} {'train tok/s':>12} {'ms/step':>9} {'sample seqs':>11} "
            f"{'sample tok/s':>12} {'ms/step':>9} {'nfe':>5}"
        )
        for p in sc["length"] + sc["batch"]:
            tr, sa = p["train"], p["sampling"]
            lines.append(
                f"  {p['length']:6d} {p['batch']:5d} {tr['tokens_per_s']:12,.0f} {tr['step_ms']:9.1f} "
                f"{sa['sequences']:11d} {sa['tokens_per_s']:12,.0f} {sa['ms_per_step']:9.2f} {sa['nfe']:5d}"
            )
    return "\n".join(lines)
