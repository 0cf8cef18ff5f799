"""BD3-LM's clipped masking rates (objectives/clipped.py): the law of the clipped mask counts against
its closed form, the full interval against the bound's own draw, the data-driven choice, and the CLI."""

import itertools
import json
import math

import pytest
import torch
from conftest import train_argv
from test_block_diffusion import random_net, text_file

from ddlm.cli import main
from ddlm.objectives.bd3lm import BlockDiffusion
from ddlm.objectives.clipped import CANDIDATES, FULL, clipped_counts, count_law, least_variance, parse_mask_rates
from ddlm.processes import Absorbing
from ddlm.schedules import LogLinear


@pytest.mark.parametrize("n", [1, 3, 4, 7])
@pytest.mark.parametrize("rates", [FULL, (0.3, 0.8), (0.45, 0.95), (0.5, 1.0), (0.0, 0.25)])
def test_clipped_counts_follow_their_law(n, rates):
    """Frequencies of k over 200,000 draws against P(k) = |[beta, omega) cap [(k-1)/n, k/n)| / (omega - beta)."""
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    k = clipped_counts(u, torch.full_like(u, n, dtype=torch.long), rates)
    freq = torch.bincount(k, minlength=n + 2)[1 : n + 2].double() / len(u)
    law = torch.tensor(count_law(n, rates) + [0.0], dtype=torch.float64)
    assert abs(law.sum().item() - 1) < 1e-12 and freq[n].item() == 0  # never more than n masked
    se = (law * (1 - law) / len(u)).sqrt()
    assert ((freq - law).abs() <= 5 * se + 1e-9).all(), (freq, law)


def test_the_full_interval_is_uniform_and_a_narrow_one_is_not():
    """[0, 1] gives the bound's uniform law on 1..n; [0.5, 1] never masks fewer than half (power check)."""
    assert count_law(4, FULL) == [0.25] * 4
    assert count_law(4, (0.5, 1.0)) == [0.0, 0.0, 0.5, 0.5]


def test_full_interval_trains_on_the_bound_as_before():
    """--mask-rates full draws exactly the counts of the bound's mask-count form, k_b = floor(u_b n_b) + 1
    with n_b a block's moving positions, computed here by hand."""
    objective = BlockDiffusion(Absorbing(5), LogLinear(eps=0.0), block_size=3)
    x0 = torch.randint(0, 5, (64, 8), generator=torch.Generator().manual_seed(0))
    u = torch.rand(64, objective.num_blocks(8), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    moving = torch.nn.functional.pad(x0 < 5, (0, 1)).view(64, 3, 3).sum(-1)  # blocks of 3 over 8 (+1 pad)
    assert torch.equal(clipped_counts(u, moving, FULL), (u * moving).floor().long() + 1)


def test_clipped_training_loss_mean_is_the_reweighted_bound():
    """With k drawn from [beta, omega], the estimate averages sum_k P(k) (n/k) mean_{|M| = k} sum_M f: on one
    block of 4, against that sum over all 15 masks enumerated; the bound's (uniform k) differs (power)."""
    objective = BlockDiffusion(Absorbing(5), LogLinear(eps=0.0), block_size=4)
    net = random_net(length=4)
    x0 = torch.randint(0, 5, (1, 4), generator=torch.Generator().manual_seed(2))
    masks = torch.tensor([m for m in itertools.product([False, True], repeat=4) if any(m)])
    with torch.no_grad():
        per_mask = objective.loss_at_mask_count(net, x0.expand(len(masks), -1), masked=masks).double()
        n = 60_000
        clipped = objective.training_loss(net, x0.expand(n, -1), torch.Generator().manual_seed(3), rates=(0.45, 0.95))
    by_k = [per_mask[masks.sum(-1) == k].mean().item() for k in range(1, 5)]  # weight 4/k included
    expected = sum(p * v for p, v in zip(count_law(4, (0.45, 0.95)), by_k, strict=True))
    se = clipped.double().std().item() / math.sqrt(n)
    assert abs(clipped.double().mean().item() - expected) < 4 * se
    bound = sum(v / 4 for v in by_k)
    assert abs(bound - expected) > 6 * se  # the clipped estimator is not the bound on this network


def test_least_variance_and_parse():
    estimates = {FULL: torch.tensor([1.0, 3.0, 5.0]), (0.5, 1.0): torch.tensor([2.0, 2.5, 3.0])}
    assert least_variance(estimates) == (0.5, 1.0)
    assert parse_mask_rates("auto") == "auto" and parse_mask_rates("full") == FULL
    assert parse_mask_rates("0.3:0.8") == (0.3, 0.8)
    for bad in ["0.8:0.3", "x", "0.3", "-0.1:0.5", "0.5:1.5"]:
        with pytest.raises(Exception, match="BETA"):
            parse_mask_rates(bad)


def test_adapt_chooses_the_candidate_of_least_variance():
    """auto: adapt measures every candidate with the same noise and keeps the one of least variance (the
    same choice when recomputed by hand); a fixed interval adapts nothing; the state round-trips."""
    net = random_net(length=8)
    x0 = torch.randint(0, 5, (200, 8), generator=torch.Generator().manual_seed(4))
    auto = BlockDiffusion(Absorbing(5), LogLinear(eps=0.0), block_size=4, mask_rates="auto")
    assert auto.rates == FULL
    changed = auto.adapt(net, x0, torch.Generator().manual_seed(5))
    by_hand = {}
    for rates in CANDIDATES:
        with torch.no_grad():
            by_hand[rates] = auto.training_loss(net, x0, torch.Generator().manual_seed(5), rates=rates) / 8
    assert changed == {"mask_rates": list(least_variance(by_hand))} and auto.rates in CANDIDATES
    assert auto.rates != FULL  # the full interval's one-masked draws are the noisiest here
    fresh = BlockDiffusion(Absorbing(5), LogLinear(eps=0.0), block_size=4, mask_rates="auto")
    fresh.load_training_state(auto.training_state())
    assert fresh.rates == auto.rates
    fixed = BlockDiffusion(Absorbing(5), LogLinear(eps=0.0), block_size=4, mask_rates="0.3:0.8")
    assert fixed.adapt(net, x0) is None and fixed.rates == (0.3, 0.8) and fixed.training_state() == {}


def test_cli_auto_logs_its_choice_and_a_resumed_run_keeps_it(tmp_path, capsys):
    data = text_file(tmp_path / "docs.txt")
    run = tmp_path / "r"
    flags = dict(objective="bd3lm", mask_rates="auto", seq_len=16, batch_size=8, eval_every=4, samples=0)
    assert main(train_argv(data, run, steps=4, **flags)) == 0
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    chosen = [r["mask_rates"] for r in records if "mask_rates" in r]
    assert chosen and tuple(chosen[-1]) in CANDIDATES
    assert json.loads((run / "config.json").read_text())["objective_options"]["mask_rates"] == "auto"
    meta = json.loads(next((run / "checkpoints").glob("step-*.json")).read_text())
    assert meta["objective_state"] == {"mask_rates": chosen[-1]}
    assert main([*train_argv(data, run, steps=8, **flags), "--resume"]) == 0


@pytest.mark.parametrize("value,needle", [("1:0", "BETA < OMEGA"), ("sometimes", "BETA:OMEGA")])
def test_cli_bad_mask_rates(tmp_path, capsys, value, needle):
    data = text_file(tmp_path / "docs.txt")
    with pytest.raises(SystemExit) as exit:
        main([*train_argv(data, tmp_path / "r", objective="bd3lm", seq_len=16, steps=1), "--mask-rates", value])
    assert exit.value.code == 2 and needle in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
