"""Block diffusion (BD3-LM): the bound against independent computations, the attention mask, the
vectorised training pass against the block-by-block sampling pass, the sampler against an exact
distribution, and the CLI."""

import itertools
import math
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import json_out, train_argv
from test_sampling import total_variation
from toy import ToyDistribution

from ddlm.cli import main
from ddlm.networks import NetConfig, Transformer
from ddlm.objectives import MDLM
from ddlm.objectives.bd3lm import BlockDiffusion, BlockPrefix, generate_blocks, training_mask
from ddlm.processes import Absorbing
from ddlm.sampling import SampleSpec, TauLeaping
from ddlm.schedules import LogLinear

V, L = 3, 4


def toy() -> ToyDistribution:
    torch.manual_seed(0)  # the toy draws its probabilities from the global generator
    return ToyDistribution(V=V, L=L)


class MaskReadingOracle(torch.nn.Module):
    """The exact conditionals of the toy, given exactly what the attention mask lets a query see.

    For query q, the visible keys (attn_mask[q], all keys without a mask) with their position ids
    and unmasked tokens form the context; the output is log p(x_pos(q) = y | context). Nothing about
    blocks is built in: a mask that leaked x_0 of a query's own block would leak the answer, and the
    bound would fall below the NLL."""

    time_conditioned = False

    def __init__(self, dist: ToyDistribution, mask_id: int):
        super().__init__()
        self.dist, self.mask_id = dist, mask_id

    def forward(self, x, sbar=None, attn_mask=None, position_ids=None):
        B, n = x.shape
        pos = torch.arange(n) if position_ids is None else position_ids
        seen = torch.ones(n, n, dtype=torch.bool) if attn_mask is None else attn_mask
        out = torch.empty(B, n, self.dist.V, dtype=torch.float64)
        for q in range(n):
            context = torch.full((B, self.dist.L), self.mask_id)
            for j in seen[q].nonzero().squeeze(-1).tolist():
                visible = x[:, j] != self.mask_id
                assert not (visible & (context[:, pos[j]] != self.mask_id)).any(), "two keys for one position"
                context[:, pos[j]] = torch.where(visible, x[:, j], context[:, pos[j]])
            probs = self.dist.masked_conditionals(context, self.mask_id)[:, pos[q]]
            out[:, q] = torch.log(probs.clamp(min=1e-300))
        return out


def random_net(positions: str = "rotary", learned: bool = False, length: int = 8, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    cfg = NetConfig(
        vocab_in=6,
        vocab_out=5,
        max_len=length,
        d_model=32,
        n_layers=2,
        n_heads=2,
        positions=positions,
        learned_positions=learned,
    )
    net = Transformer(cfg)
    for p in net.parameters():  # a random, non-trivial model (the zero head would be uniform)
        torch.nn.init.normal_(p, std=0.3)
    return net.eval()


# --- the bound ------------------------------------------------------------------------------------


def test_block_size_one_is_the_exact_ar_nll_of_the_network():
    """B = 1: every block is one token, always masked, weight 1; the bound is sum_i -log p(x_i | x_<i),
    computed here by running the network on each prefix followed by one mask, attention causal."""
    net = random_net()
    process = Absorbing(5)
    objective = BlockDiffusion(process, LogLinear(), block_size=1)
    x0 = torch.randint(0, 5, (6, 8), generator=torch.Generator().manual_seed(0))
    by_hand = torch.zeros(6)
    with torch.no_grad():
        for i in range(8):
            inputs = torch.cat([x0[:, :i], torch.full((6, 1), process.mask_id)], dim=1)
            causal = torch.ones(i + 1, i + 1, dtype=torch.bool).tril()
            logits = net(inputs, attn_mask=causal)[:, -1]
            by_hand += F.cross_entropy(logits, x0[:, i], reduction="none")
        for k in (torch.ones(6, dtype=torch.long), torch.tensor([1, 2, 3, 5, 7, 8])):  # any count maps to 1
            bound = objective.loss_at_mask_count(net, x0, k, generator=torch.Generator().manual_seed(1))
            torch.testing.assert_close(bound, by_hand, atol=1e-4, rtol=1e-5)


def test_block_size_one_time_form_has_the_ar_loss_in_expectation():
    """B = 1 under the training form (an independent time per one-token block, the token masked with
    probability t and weighted 1/t): the mean over draws is the network's AR NLL, sum_i -log p(x_i | x_<i),
    computed with the mask-count form checked by hand above; each token is an unbiased 1/t-weighted coin."""
    net = random_net()
    objective = BlockDiffusion(Absorbing(5), LogLinear(eps=0.0), block_size=1)
    x0 = torch.randint(0, 5, (1, 8), generator=torch.Generator().manual_seed(2))
    n = 20_000
    with torch.no_grad():
        ar_nll = objective.loss_at_mask_count(net, x0, torch.ones(1, dtype=torch.long)).double().item()
        losses = objective.loss(net, x0.expand(n, -1), generator=torch.Generator().manual_seed(3), t_min=0.0).double()
    mean, se = losses.mean().item(), losses.std().item() / math.sqrt(n)
    assert abs(mean - ar_nll) < 4 * se, (mean, ar_nll, se)
    assert se < 0.05 * ar_nll  # the check is sharp enough to see a missing 1/t or a wrong mask rate


def test_one_block_is_mdlm_for_the_same_draws():
    """B = L: the same t and the same random stream give MDLM's loss, in both forms."""
    net = random_net()
    process = Absorbing(5)
    bd3, mdlm = BlockDiffusion(process, LogLinear(), block_size=8), MDLM(process, LogLinear())
    x0 = torch.randint(0, 5, (16, 8), generator=torch.Generator().manual_seed(0))
    t = torch.linspace(0.05, 0.95, 16)
    k = torch.arange(16) % 8 + 1
    with torch.no_grad():
        for form in (lambda o, g: o.loss(net, x0, t=t, generator=g), lambda o, g: o.loss_at_mask_count(net, x0, k, g)):
            ours = form(bd3, torch.Generator().manual_seed(3))
            theirs = form(mdlm, torch.Generator().manual_seed(3))
            assert (theirs > 0).any()
            torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("block", [1, 2, 3, 4])
def test_mask_count_form_is_exact_nll_with_exact_conditionals(block):
    """Exact expectation by enumeration: in each block of n_b positions (B, or fewer in a last block cut
    short: L = 4 in blocks of 3 is [3, 1]) independently, every count k in 1..n_b and every subset of k
    positions, each with probability 1 / (n_b C(n_b, k))."""
    dist = toy()
    process = Absorbing(V)
    objective = BlockDiffusion(process, LogLinear(), block_size=block)
    oracle = MaskReadingOracle(dist, process.mask_id)
    starts = range(0, L, block)
    choices = []  # per block: (positions masked, probability)
    for start in starts:
        size = min(block, L - start)
        choices.append([
            ([start + i for i in subset], 1 / (size * math.comb(size, k)))
            for k in range(1, size + 1)
            for subset in itertools.combinations(range(size), k)
        ])  # fmt: skip
    patterns = list(itertools.product(*choices))
    masked = torch.zeros(len(patterns), L, dtype=torch.bool)
    weight = torch.ones(len(patterns), dtype=torch.float64)
    for row, pattern in enumerate(patterns):
        for positions, p in pattern:
            masked[row, positions] = True
            weight[row] *= p
    assert abs(weight.sum().item() - 1) < 1e-12
    for seq in [0, 17, 40, 80]:
        x0 = dist.seqs[seq].expand(len(patterns), -1)
        expected = (weight * objective.loss_at_mask_count(oracle, x0, masked=masked).double()).sum().item()
        assert abs(expected - (-math.log(dist.p[seq].item()))) < 1e-5, (seq, expected)


def test_time_form_is_exact_nll_within_monte_carlo_error():
    """The training form (an independent stratified t per block, eps = 0) averages to the NLL."""
    dist = toy()
    process = Absorbing(V)
    objective = BlockDiffusion(process, LogLinear(eps=0.0), block_size=2)
    oracle = MaskReadingOracle(dist, process.mask_id)
    n = 20_000
    for seq in [3, 50]:
        g = torch.Generator().manual_seed(seq)
        losses = objective.loss(oracle, dist.seqs[seq].expand(n, -1), generator=g, t_min=0.0).double()
        mean, se = losses.mean().item(), losses.std().item() / math.sqrt(n)
        assert abs(mean - (-math.log(dist.p[seq].item()))) < 4 * se + 1e-3, (seq, mean, se)


def test_training_loss_is_the_bound_in_expectation_with_lower_variance():
    """training_loss (mask counts) and loss (times) estimate the same NELBO of one network; the count
    form's spread is smaller."""
    objective = BlockDiffusion(Absorbing(5), LogLinear(eps=0.0), block_size=4)
    net = random_net(length=8)
    x0 = torch.randint(0, 5, (1, 8)).expand(4_000, -1)
    with torch.no_grad():
        by_count = objective.training_loss(net, x0, generator=torch.Generator().manual_seed(0)).double()
        by_time = objective.loss(net, x0, generator=torch.Generator().manual_seed(1), t_min=0.0).double()
    se = math.hypot(by_count.std().item(), by_time.std().item()) / math.sqrt(len(x0))
    assert abs(by_count.mean().item() - by_time.mean().item()) < 4 * se
    assert by_count.std() < by_time.std()


def test_a_last_block_cut_short_has_the_bound_in_both_forms():
    """L = 8 in blocks of 3 ([3, 3, 2]): the time form, the count form and training agree in expectation."""
    objective = BlockDiffusion(Absorbing(5), LogLinear(eps=0.0), block_size=3)
    net = random_net(length=8)
    x0 = torch.randint(0, 5, (1, 8)).expand(4_000, -1)
    with torch.no_grad():
        by_count = objective.training_loss(net, x0, generator=torch.Generator().manual_seed(0)).double()
        by_time = objective.loss(net, x0, generator=torch.Generator().manual_seed(1), t_min=0.0).double()
    se = math.hypot(by_count.std().item(), by_time.std().item()) / math.sqrt(len(x0))
    assert abs(by_count.mean().item() - by_time.mean().item()) < 4 * se


# --- the mask, and training against sampling --------------------------------------------------------


def test_training_mask_by_hand():
    """L = 4, B = 2: rows are queries [x_t positions 0..3, x_0 positions 0..3], columns keys likewise."""
    expected = torch.tensor(
        [
            # x_t keys   x_0 keys
            [1, 1, 0, 0, 0, 0, 0, 0],  # x_t 0 (block 0): its own block, no clean prefix
            [1, 1, 0, 0, 0, 0, 0, 0],
            [0, 0, 1, 1, 1, 1, 0, 0],  # x_t 2 (block 1): x_t of block 1, x_0 of block 0
            [0, 0, 1, 1, 1, 1, 0, 0],
            [0, 0, 0, 0, 1, 1, 0, 0],  # x_0 0 (block 0): x_0 of block 0
            [0, 0, 0, 0, 1, 1, 0, 0],
            [0, 0, 0, 0, 1, 1, 1, 1],  # x_0 2 (block 1): x_0 of blocks 0 and 1
            [0, 0, 0, 0, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(training_mask(4, 2), expected)
    big = training_mask(12, 3)
    assert big[7, 6] and big[7, 8] and not big[7, 9] and not big[7, 5]  # x_t 7 (block 2): x_t 6..8 only
    assert big[7, 12 + 5] and not big[7, 12 + 6]  # x_0 of blocks 0, 1 but not its own block
    assert big[12 + 7, 12 + 8] and not big[12 + 7, 12 + 9] and not big[12 + 7, 7]


@pytest.mark.parametrize(
    "positions,learned", [("rotary", False), ("sinusoidal", False), ("sinusoidal", True)], ids=["rot", "sin", "learn"]
)
def test_training_pass_gives_the_sampling_pass_logits(positions, learned):
    """The vectorised pass on [x_t ; x_0] and the sampler's pass on [x^{<b} ; x_t^b] agree block by block."""
    net = random_net(positions, learned, length=12)
    process = Absorbing(5)
    objective = BlockDiffusion(process, LogLinear(), block_size=3)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 5, (4, 12), generator=g)
    xt = process.perturb(x0, torch.full((4, 12), 0.7), g)
    with torch.no_grad():
        vectorised = objective.block_logits(net, xt, x0)
        for kv_cache in (False, True):  # the prefix re-read by every call, or its keys and values cached
            context = BlockPrefix(net, 3, 4, kv_cache, "cpu")
            for b in range(4):
                alone = context(xt[:, 3 * b : 3 * b + 3], rows=torch.arange(4))
                torch.testing.assert_close(vectorised[:, 3 * b : 3 * b + 3], alone, atol=1e-4, rtol=1e-4)
                context.extend(x0[:, 3 * b : 3 * b + 3])
        # and the first block alone is the plain network on it (nothing before it)
        torch.testing.assert_close(vectorised[:, :3], net(xt[:, :3]), atol=1e-4, rtol=1e-4)


def test_network_default_path_is_untouched_by_the_new_arguments():
    """Full attention and positions 0..L-1 given explicitly give the default forward's output."""
    net = random_net(length=8)
    x = torch.randint(0, 6, (3, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        explicit = net(x, attn_mask=torch.ones(8, 8, dtype=torch.bool), position_ids=torch.arange(8))
        torch.testing.assert_close(explicit, net(x), atol=1e-5, rtol=1e-5)


# --- sampling ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("block,steps", [(2, 256), (1, 4), (4, 256), (3, 256)])
def test_block_sampler_matches_exact_distribution(block, steps):
    """Expected TV of an exact sampler's histogram over 81 outcomes at n = 20k is about 0.02."""
    dist = toy()
    process = Absorbing(V)
    objective = BlockDiffusion(process, LogLinear(), block_size=block)
    oracle = MaskReadingOracle(dist, process.mask_id)
    result = generate_blocks(
        oracle,
        objective,
        20_000,
        L,
        SampleSpec(steps=steps, rule=TauLeaping(), kv_cache=False),  # the oracle reads tokens, not keys
        generator=torch.Generator().manual_seed(0),
    )
    assert not (result.tokens == process.mask_id).any()
    assert total_variation(dist, result.tokens) < 0.04
    assert result.nfe.min() >= -(-L // block)  # at least one evaluation per block


@pytest.mark.parametrize(
    "block,steps,unseen",
    [(2, 256, "prefix"), (3, 256, "prefix"), (1, 4, "previous-block")],
)
def test_block_tv_bound_has_power(monkeypatch, block, steps, unseen):
    """The same bound, sample count and steps fail for a block sampler whose attention mask hides the
    prefix from the block being sampled (each block then drawn from its own marginal: TV 0.11 at blocks
    of 2 and 3), or only the block just before it (blocks of 1: TV 0.11), against 0.022-0.028 for the
    right sampler. One block of 4 has no prefix to hide."""
    from ddlm.objectives import bd3lm

    def hiding(length, size, device=None):
        b = torch.arange(length, device=device) // size
        if unseen == "prefix":
            return b[None, :] == b[:, None]
        return (b[None, :] <= b[:, None]) & (b[None, :] != b[:, None] - 1)

    monkeypatch.setattr(bd3lm, "block_causal_mask", hiding)
    dist = toy()
    process = Absorbing(V)
    objective = BlockDiffusion(process, LogLinear(), block_size=block)
    spec = SampleSpec(steps=steps, rule=TauLeaping(), kv_cache=False)
    oracle = MaskReadingOracle(dist, process.mask_id)
    result = generate_blocks(oracle, objective, 20_000, L, spec, generator=torch.Generator().manual_seed(0))
    assert total_variation(dist, result.tokens) > 0.04


@pytest.mark.parametrize("pad", [False, True], ids=["window", "records"])
@pytest.mark.parametrize("steps", [8, 64])
def test_key_value_cache_gives_the_same_samples(pad, steps):
    """The same seed gives the same samples with the prefix's keys and values cached as with the prefix
    re-read by every call, clamps included; with records (a padding id the network never attends to),
    each row's padding starts at its own place."""
    torch.manual_seed(0)
    cfg = NetConfig(vocab_in=7, vocab_out=6, max_len=14, d_model=32, n_layers=2, n_heads=2, positions="rotary",
                    pad_id=5 if pad else None)  # fmt: skip
    net = Transformer(cfg)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    objective = BlockDiffusion(Absorbing(6, support=5 if pad else None), LogLinear(), block_size=3)
    g = torch.Generator().manual_seed(1)
    clamp = torch.rand(32, 14, generator=g) < 0.2
    values = torch.randint(0, 5, (32, 14), generator=g)
    if pad:  # row r holds padding from position 4 + r % 9 on
        padding = torch.arange(14)[None, :] >= 4 + torch.arange(32)[:, None] % 9
        clamp, values = clamp | padding, torch.where(padding, 5, values)
    samples = {}
    for kv_cache in (False, True):
        spec = SampleSpec(steps=steps, rule=TauLeaping(), kv_cache=kv_cache)
        gen = torch.Generator().manual_seed(2)
        result = generate_blocks(net.eval(), objective, 32, 14, spec, clamp=clamp, clamp_values=values, generator=gen)
        samples[kv_cache] = result
    assert torch.equal(samples[True].tokens, samples[False].tokens)
    assert torch.equal(samples[True].nfe, samples[False].nfe)
    assert torch.equal(samples[True].tokens[clamp], values[clamp]) and not (samples[True].tokens == 6).any()


def test_block_sampler_holds_clamped_positions():
    net = random_net(length=8)
    objective = BlockDiffusion(Absorbing(5), LogLinear(), block_size=2)
    g = torch.Generator().manual_seed(0)
    clamp = torch.rand(8, 8, generator=g) < 0.4
    values = torch.randint(0, 5, (8, 8), generator=g)
    result = generate_blocks(
        net, objective, 8, 8, SampleSpec(steps=16, rule=TauLeaping()), clamp=clamp, clamp_values=values, generator=g
    )
    assert torch.equal(result.tokens[clamp], values[clamp])
    assert not (result.tokens == 5).any()


# --- CLI --------------------------------------------------------------------------------------------


def text_file(path):
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "Lily", "saw", "big", "dog", "!", ","]
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 30))) for _ in range(300)]
    path.write_text("\n\n".join(docs) + "\n")
    return path


@pytest.fixture(scope="module")
def bd3_run(tmp_path_factory, make_run):
    data = text_file(tmp_path_factory.mktemp("data") / "docs.txt")
    flags = dict(steps=8, seq_len=16, batch_size=8, eval_every=4, samples=2, sample_steps=8)
    return make_run(data, objective="bd3lm", diffusion_block=4, **flags)


def test_cli_train_eval_sample(bd3_run, capsys):
    import json

    config = json.loads((bd3_run / "config.json").read_text())
    assert config["objective"] == "bd3lm" and config["objective_options"] == {"block_size": 4, "mask_rates": "full"}
    result = json_out(capsys, ["eval", str(bd3_run), "--json", "--quiet", "--time-samples", "2"])
    assert result["bound"] == "nelbo" and result["objective"] == "bd3lm"
    assert 0 < result["bits_per_token"] < 10 and result["bits_per_char"] > 0 and result["mc_standard_error"] > 0
    result = json_out(capsys, ["sample", str(bd3_run), "--n", "3", "--steps", "8", "--json", "--quiet"])
    assert len(result["samples"]) == 3 and 4 <= result["nfe"] <= 16 + 4  # >= 1 per block, <= B + 1 per block


def test_cli_semi_ar_is_refused_for_bd3lm(bd3_run, capsys):
    assert main(["sample", str(bd3_run), "--semi-ar", "--length", "40", "--quiet"]) == 2
    assert "bd3lm" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--objective", "mdlm", "--diffusion-block", "4"], "--diffusion-block"),
        (["--objective", "bd3lm", "--process", "uniform"], "--objective bd3lm"),
        (["--objective", "bd3lm", "--time-conditioning"], "--time-conditioning"),
    ],
)
def test_cli_bad_block_flags(tmp_path, capsys, flags, needle):
    data = text_file(tmp_path / "docs.txt")
    assert main([*train_argv(data, tmp_path / "r", seq_len=16, steps=1), *flags]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing is written for a rejected command
