"""`ddlm bench`: the JSON contract (keys, positive finite figures, nfe bounds, MFU) and the scaling plot.

Tiny settings only: the figures are checked for shape and sanity, never for speed.
"""

import argparse
import contextlib
import io
import json
import math

import pytest
import torch

from ddlm.bench import format_table
from ddlm.cli.bench import add_parser, cmd_bench
from ddlm.device import VECTOR_FLAGS, cpu_vector_flags
from ddlm.errors import UserError
from ddlm.networks import NetConfig
from ddlm.reference import ReferenceTrainer, mask_tokens, masked_cross_entropy, reference_sample

LENGTH = 24
TINY = ["--preset", "tiny", "--seconds", "0.05", "--length", str(LENGTH), "--batch-size", "8", "--quiet"]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ddlm")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["bench", *argv])


def positive_finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory) -> tuple[dict, str, object]:
    """One tiny benchmark with --scaling on short lengths, shared by the tests below."""
    plot = tmp_path_factory.mktemp("bench") / "scaling.png"
    argv = [
        *TINY,
        "--json",
        "--scaling",
        "--scaling-lengths",
        "8,16",
        "--scaling-batches",
        "1,4",
        "--scaling-seconds",
        "0.05",
        "--scaling-steps",
        "16",
        "--plot",
        str(plot),
    ]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cmd_bench(parse(argv)) == 0
    text = out.getvalue()
    return json.loads(text), text, plot


def test_json_is_one_object_with_the_documented_keys(bench_run):
    result, text, _ = bench_run
    assert text.count("\n") == 1
    assert set(result) >= {
        "machine",
        "preset",
        "parameters",
        "peak_gflops",
        "train",
        "sampling",
        "cache_speedup",
        "peak_memory_mib",
        "scaling",
    }
    assert result["preset"] == "tiny"
    assert {"cpu", "cores", "torch_threads", "torch", "device"} <= set(result["machine"])
    assert positive_finite(result["parameters"])
    assert positive_finite(result["peak_gflops"]["fp32"])
    for value in result["peak_gflops"].values():
        assert positive_finite(value)
    assert positive_finite(result["peak_memory_mib"]["rss"])
    # a high-water mark: bd3lm's, taken after it, is at least the default run's
    assert result["bd3lm_sampling"]["peak_memory_mib"]["rss"] >= result["peak_memory_mib"]["rss"]
    assert positive_finite(result["cache_speedup"])


def test_training_figures_and_mfu(bench_run):
    train = bench_run[0]["train"]
    for key in ("tokens_per_s", "step_ms", "flops_per_token", "achieved_gflops", "mfu"):
        assert positive_finite(train[key]), key
    assert train["precision"] in bench_run[0]["peak_gflops"]
    assert 0 < train["mfu"] <= 1  # achieved model FLOP/s cannot beat the best plain matrix product
    assert train["batch_size"] == 8 and train["length"] == LENGTH
    assert train["compiled"] is False  # the record says which step it timed


def test_sampling_nfe_bounds(bench_run):
    sampling = bench_run[0]["sampling"]
    assert set(sampling) == {"128", "1024", "reference", "uncached_vs_reference", "cached_vs_reference"}
    for steps, by_cache in ((k, v) for k, v in sampling.items() if k.isdigit()):
        assert set(by_cache) == {"cached", "uncached"}
        for run in by_cache.values():
            for key in ("seconds", "samples_per_s", "sequences_per_minute", "nfe"):
                assert positive_finite(run[key]), (steps, key)
        # cached: each re-evaluation follows an unmasking, so at most one per position plus the first
        assert by_cache["cached"]["nfe"] <= LENGTH + 1
        # uncached: one evaluation per step, fewer if every position is unmasked before the last step
        assert by_cache["cached"]["nfe"] <= by_cache["uncached"]["nfe"] <= int(steps) + 1
    assert sampling["1024"]["uncached"]["nfe"] > sampling["1024"]["cached"]["nfe"]


def test_ratios_to_the_reference(bench_run):
    """The issue's keys: ddlm against the plain PyTorch reference at the same precision, in one run."""
    result = bench_run[0]
    train, sampling = result["train"], result["sampling"]
    assert positive_finite(train["vs_reference"]) and positive_finite(sampling["uncached_vs_reference"])
    assert positive_finite(sampling["cached_vs_reference"])
    for key in ("tokens_per_s", "step_ms", "step_ms_median", "mfu"):
        assert positive_finite(train["reference"][key]), key
    assert train["reference"]["steps"] >= 3
    call = sampling["reference"]
    assert positive_finite(call["ms_per_call"]) and positive_finite(call["reference_ms_per_call"])
    # the ratios are what they say: medians of step times, and per-call times
    assert train["vs_reference"] == pytest.approx(train["reference"]["step_ms_median"] / train["step_ms_median"])
    assert sampling["uncached_vs_reference"] == pytest.approx(call["reference_ms_per_call"] / call["ms_per_call"])
    assert result["machine"]["cpu_flags"] == cpu_vector_flags()


def test_reference_cross_entropy_is_the_masked_positions_mean():
    """masked_cross_entropy against a hand computation: -log softmax at the clean token, masked only."""
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]]])
    x0 = torch.tensor([[0, 2, 2]])
    masked = torch.tensor([[True, True, False]])
    # position 0: -log(e^2 / (e^2 + 2)); position 1: -log(1 / (e + 2)); position 2 unmasked, not counted
    hand = (-math.log(math.exp(2) / (math.exp(2) + 2)) - math.log(1 / (math.e + 2))) / 2
    assert masked_cross_entropy(logits, x0, masked).item() == pytest.approx(hand, rel=1e-6)
    assert masked_cross_entropy(logits, x0, torch.zeros_like(masked)).item() == 0.0


def test_reference_trains_and_samples():
    """An untrained reference (zero signal) scores log V nats per masked token at its uniform start, its
    AdamW steps lower the loss on one repeated batch, and its sampler leaves no mask behind."""
    cfg = NetConfig(5, 4, 12, d_model=16, n_layers=1, n_heads=2)
    trainer = ReferenceTrainer(cfg, mask_id=4, amp=None, device=torch.device("cpu"), lr=1e-2)
    torch.nn.init.zeros_(trainer.net.head.weight)
    torch.nn.init.zeros_(trainer.net.head.bias)
    x0 = torch.randint(0, 4, (8, 12), generator=torch.Generator().manual_seed(0))
    xt, masked = mask_tokens(x0, 4, torch.Generator().manual_seed(1))
    assert torch.equal(xt[masked], torch.full_like(xt[masked], 4)) and torch.equal(xt[~masked], x0[~masked])
    first = trainer.step(x0)
    assert first == pytest.approx(math.log(4), rel=1e-5)
    losses = [trainer.step(x0) for _ in range(30)]
    assert sum(losses[-5:]) / 5 < first
    out = reference_sample(trainer.net, 3, 12, 4, mask_id=4, amp=None, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 12) and int(out.max()) < 4


def test_scaling_writes_png_and_numbers(bench_run):
    result, _, plot = bench_run
    scaling = result["scaling"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert scaling["plot"] == str(plot)
    assert [p["length"] for p in scaling["length"]] == [8, 16]
    assert [p["batch"] for p in scaling["batch"]] == [1, 4]
    assert all(p["length"] == LENGTH for p in scaling["batch"])
    for p in scaling["length"] + scaling["batch"]:
        for part in ("train", "sampling"):
            assert positive_finite(p[part]["tokens_per_s"])
        assert positive_finite(p["train"]["step_ms"])
        assert positive_finite(p["sampling"]["ms_per_step"])
        assert p["sampling"]["nfe"] <= p["length"] + 1


def test_table_names_every_figure(bench_run):
    table = format_table(bench_run[0])
    assert ", ".join(bench_run[0]["machine"]["cpu_flags"]) in table
    words = ("tokens/s", "MFU", "GFLOP/s", "cache speedup", "peak memory", "1024", "uncached", "scaling", "reference")
    for word in words:
        assert word in table


def test_vector_flags_name_the_extensions_that_decide_precision():
    avx2_only = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
    amx = "flags\t\t: avx2 avx512f avx512_bf16 amx_tile amx_bf16\nflags\t\t: avx2\n"
    assert cpu_vector_flags(avx2_only) == ["AVX2"]
    assert cpu_vector_flags(amx) == ["AVX2", "AVX-512", "AVX-512 BF16", "AMX"]  # the first CPU's line
    assert cpu_vector_flags("model name\t: x\n") == []
    assert set(cpu_vector_flags()) <= set(VECTOR_FLAGS.values())  # this machine's own


def test_plot_without_scaling_is_a_user_error():
    with pytest.raises(UserError, match="--scaling"):
        cmd_bench(parse([*TINY, "--plot", "x.png"]))


@pytest.mark.parametrize("bad", ["", "64,x", "0,64"])
def test_bad_scaling_list_is_rejected(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(["--scaling-lengths", bad])
    assert exc.value.code == 2


def test_compile_flag_reaches_the_timed_trainer(tmp_path):
    """`ddlm bench --compile` times the trainer `ddlm train --compile` builds; without it, the eager one."""
    from ddlm.bench import make_setup

    for argv, compiled in (([], False), (["--compile"], True)):
        setup = make_setup(parse([*TINY, *argv]))
        trainer = setup.new_trainer(tmp_path / str(compiled), 8, LENGTH)
        assert setup.compile is compiled and trainer.cfg.compile is compiled
        assert isinstance(trainer.model, torch._dynamo.eval_frame.OptimizedModule) is compiled
