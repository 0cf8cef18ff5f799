"""Labels and classifier-free guidance (guidance/cfg.py), against exact answers on an enumerable toy.

The toy: sequences of 3 tokens over 3 letters with a label y in {0, 1}; p(x | y) is one ToyDistribution
per label and p(y) = (0.4, 0.6), so p(x) = sum_y p(y) p(x | y) and every conditional an exact network
needs is a brute-force enumeration. Label index 2 is the null label: the exact networks below answer
it with the conditionals of p(x), as a network trained with label dropout learns to.
"""

import json
import math

import pytest
import torch
from toy import ToyDistribution

from ddlm.cli import main
from ddlm.config import RunConfig
from ddlm.data.labels import LabelFeed, header_label
from ddlm.errors import UserError
from ddlm.guidance.cfg import CacheView, Guided, guided_network
from ddlm.networks import Labelled, NetConfig, Transformer
from ddlm.objectives import MDLM, ScoreEntropy
from ddlm.objectives.ar import AutoRegressive, generate_ar
from ddlm.processes import Absorbing, Uniform
from ddlm.run import load_run
from ddlm.sampling import SampleSpec, TauLeaping, generate
from ddlm.schedules import Geometric, LogLinear

N = 20_000
# An exact sampler's empirical TV over 27 outcomes at n = 20k is about 0.015 (test_sampling.py); the
# bounds leave room for that and for the steps' discretisation. TV(p(x | y=0), p(x)) is about 0.19 here,
# so a sampler that ignores the label fails them by far.
BOUND = 0.03
PRIOR = (0.4, 0.6)
NULL = 2


def labelled_toys() -> list[ToyDistribution]:
    """[p(x | y=0), p(x | y=1), p(x)]: the last is indexed by the null label."""
    toys = [ToyDistribution(seed=1), ToyDistribution(seed=2)]
    marginal = ToyDistribution(seed=1)
    marginal.p = PRIOR[0] * toys[0].p + PRIOR[1] * toys[1].p
    return [*toys, marginal]


def total_variation(toy: ToyDistribution, p: torch.Tensor, samples: torch.Tensor) -> float:
    counts = torch.bincount(toy.index(samples), minlength=len(p)).double()
    return 0.5 * (counts / counts.sum() - p).abs().sum().item()


def by_label(labels, batch: int, compute) -> torch.Tensor:
    """Rows grouped by label (None: the null label), `compute(label, rows)` run once per label present."""
    labels = torch.full((batch,), NULL) if labels is None else labels
    parts = {int(v): compute(int(v), labels == v) for v in labels.unique()}
    out = torch.empty(batch, *next(iter(parts.values())).shape[1:], dtype=torch.float64)
    for v, part in parts.items():
        out[labels == v] = part
    return out


class LabelledAbsorbingNet(torch.nn.Module):
    """o_y = log(scale p(x0_i = y | x_t, label)) + offset[position]: the exact optimum of an absorbing
    objective, plus a per-position offset that leaves the normalised prediction alone (a SEDD network's
    total rate is free) when `offset`."""

    time_conditioned = False

    def __init__(self, mask_id: int, scale: float, offset: bool = False):
        super().__init__()
        self.toys, self.mask_id, self.log_scale = labelled_toys(), mask_id, math.log(scale)
        self.offset = offset

    def forward(self, xt, sbar=None, *, labels=None):
        def compute(label, rows):
            return torch.log(self.toys[label].masked_conditionals(xt[rows], self.mask_id)) + self.log_scale

        out = by_label(labels, xt.shape[0], compute)
        if self.offset:  # a deterministic function of the input: time-independent, as the sampler's cache needs
            out = out + 0.3 * torch.sin(xt.double() + torch.arange(xt.shape[1]))[..., None]
        return out


class LabelledUniformNet(torch.nn.Module):
    """The exact log concrete score of the uniform process given the label (a table over all 27
    sequences per noise level, looked up by each row's sequence)."""

    time_conditioned = True

    def __init__(self):
        super().__init__()
        self.toys = labelled_toys()

    def forward(self, xt, sbar, *, labels=None):
        def compute(label, rows):
            toy = self.toys[label]
            out = torch.empty(int(rows.sum()), xt.shape[1], 3, dtype=torch.float64)
            for value in sbar[rows].unique():
                sub = sbar[rows] == value
                out[sub] = torch.log(toy.uniform_scores(toy.seqs, float(value)))[toy.index(xt[rows][sub])]
            return out

        return by_label(labels, xt.shape[0], compute)


class LabelledARNet(torch.nn.Module):
    """Logits log p(x_i | x_<i, label), with a key/value cache as the transformer keeps one: the cache's
    "k" holds the inputs seen so far (one layer)."""

    time_conditioned = False
    layers = (None,)

    def __init__(self):
        super().__init__()
        self.toys = labelled_toys()

    def forward(self, inputs, sbar=None, kv_caches=None, start=0, *, labels=None):
        new = inputs.shape[1]
        if kv_caches is not None:
            if "k" in kv_caches[0]:
                inputs = torch.cat([kv_caches[0]["k"], inputs], dim=1)
            kv_caches[0]["k"] = inputs
        out = by_label(labels, inputs.shape[0], lambda label, rows: ar_log_probs(self.toys[label], inputs[rows]))
        return out[:, -new:]


def ar_log_probs(toy: ToyDistribution, inputs: torch.Tensor) -> torch.Tensor:
    """[B, n, V] log p(x_{i} | x_<i) by enumeration; inputs = [start, x_1 .. x_{n-1}]."""
    B, n = inputs.shape
    out = torch.empty(B, n, toy.V, dtype=torch.float64)
    for i in range(n):
        match = (toy.seqs[None, :, :i] == inputs[:, None, 1 : i + 1]).all(-1)
        probs = (match * toy.p[None]) @ torch.nn.functional.one_hot(toy.seqs[:, i], toy.V).double()
        out[:, i] = torch.log(probs / probs.sum(-1, keepdim=True))
    return out


def guided(net, objective, label: int, gamma: float) -> Guided:
    return Guided(net, objective.mix_guided, label, NULL, gamma)


def cfg_law(p_cond: torch.Tensor, p_uncond: torch.Tensor, gamma: float) -> torch.Tensor:
    """The independent formula: p_gamma ∝ p_cond^gamma p_uncond^(1 - gamma) over the last axis."""
    w = p_cond**gamma * p_uncond ** (1 - gamma)
    return w / w.sum(-1, keepdim=True)


# --- the mixing rule of each objective, against the formula ---------------------------------------


def partly_masked(mask_id: int) -> torch.Tensor:
    toy = ToyDistribution()
    xt = toy.seqs.clone()
    xt[torch.arange(len(xt)) % 3 == 0, 0] = mask_id
    xt[torch.arange(len(xt)) % 2 == 0, 2] = mask_id
    return xt


@pytest.mark.parametrize("objective_cls,scale,offset", [(MDLM, 1.0, False), (ScoreEntropy, 3.0, True)])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.5])
def test_absorbing_guidance_mixes_the_clean_token_predictions(objective_cls, scale, offset, gamma):
    """exp(log score) * expm1(sbar) at a masked position = p_cond^gamma p_null^(1 - gamma), normalised:
    the scores sum to 1 / expm1(sbar) (the schedule's unmasking rate) whatever the network's total."""
    process = Absorbing(3)
    objective = objective_cls(process, LogLinear())
    net = LabelledAbsorbingNet(process.mask_id, scale, offset)
    xt = partly_masked(process.mask_id)
    sbar = torch.full((len(xt), 1, 1), 0.7)
    scores = objective.log_score(guided(net, objective, 1, gamma)(xt, sbar[:, 0, 0]), xt, sbar).exp()
    toys = labelled_toys()
    want = cfg_law(toys[1].masked_conditionals(xt, 3), toys[2].masked_conditionals(xt, 3), gamma)
    masked = xt == process.mask_id
    torch.testing.assert_close(scores[masked].double() * math.expm1(0.7), want[masked], atol=1e-5, rtol=1e-5)
    if gamma not in (0.0, 1.0):  # power: mixing the probabilities instead differs beyond the tolerance
        linear = gamma * toys[1].masked_conditionals(xt, 3) + (1 - gamma) * toys[2].masked_conditionals(xt, 3)
        assert not torch.allclose(scores[masked].double() * math.expm1(0.7), linear[masked], atol=1e-3)
    if offset and gamma not in (0.0, 1.0):  # power: SEDD's raw log scores mixed without normalising differ
        raw = gamma * net(xt, labels=torch.ones(len(xt), dtype=torch.long)) + (1 - gamma) * net(xt)
        assert not torch.allclose(objective.log_score(raw.float(), xt, sbar), scores.log(), atol=1e-3)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.5])
def test_uniform_guidance_mixes_the_log_rates(gamma):
    """log s_gamma = gamma log s(x_t, y) + (1 - gamma) log s(x_t, null), the current token's ratio 1."""
    objective = ScoreEntropy(Uniform(3), Geometric())
    net = LabelledUniformNet()
    xt = ToyDistribution().seqs[::2]
    sbar = torch.full((len(xt),), 0.4)
    log_s = objective.log_score(guided(net, objective, 0, gamma)(xt, sbar), xt, sbar[:, None, None])
    toys = labelled_toys()
    want = gamma * toys[0].uniform_scores(xt, 0.4).log() + (1 - gamma) * toys[2].uniform_scores(xt, 0.4).log()
    torch.testing.assert_close(log_s.double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.5])
def test_ar_guidance_mixes_the_next_token_logits(gamma):
    objective = AutoRegressive(Absorbing(3), None)
    inputs = torch.cat([torch.full((27, 1), 3), ToyDistribution().seqs[:, :2]], dim=1)
    probs = torch.softmax(guided(LabelledARNet(), objective, 1, gamma)(inputs), dim=-1)
    toys = labelled_toys()
    want = cfg_law(ar_log_probs(toys[1], inputs).exp(), ar_log_probs(toys[2], inputs).exp(), gamma)
    torch.testing.assert_close(probs.double(), want, atol=1e-5, rtol=1e-5)


# --- the laws the samplers draw -------------------------------------------------------------------


@pytest.mark.parametrize(
    "objective_cls,scale,offset,power",
    [(MDLM, 1.0, False, True), (ScoreEntropy, 3.0, True, False)],
    ids=["mdlm", "sedd"],
)
def test_cfg_1_samples_the_conditional_law_and_0_the_unconditional(objective_cls, scale, offset, power):
    """gamma 1 samples p(x | y) within BOUND; gamma 0 (a sampler that ignores the label) samples p(x)
    within BOUND and fails BOUND against p(x | y); so does the other label. (The clocked sampler with
    its cache; test_sampling.py shows it follows the stepwise sampler's law.)"""
    process = Absorbing(3)
    objective = objective_cls(process, LogLinear())
    net = LabelledAbsorbingNet(process.mask_id, scale, offset)
    toys = labelled_toys()
    spec = SampleSpec(steps=256, rule=TauLeaping())

    def tv(label: int, gamma: float, target: int) -> float:
        result = generate(
            guided(net, objective, label, gamma), objective, N, 3, spec, generator=torch.Generator().manual_seed(0)
        )
        return total_variation(toys[target], toys[target].p, result.tokens)

    assert tv(0, 1.0, target=0) < BOUND
    assert tv(0, 0.0, target=2) < BOUND
    if power:
        assert tv(0, 0.0, target=0) > BOUND  # ignoring the label
        assert tv(1, 1.0, target=0) > BOUND  # the wrong label


def test_cfg_1_samples_the_conditional_law_uniform_process():
    """Within test_sampling's bound for the uniform process (0.035). Power, without a second run of this
    slow sampler: the law of a sampler that ignores the label, p(x), is 0.12 from p(x | y=1) in TV,
    beyond the bound plus twice the empirical TV of an exact sampler at N (about 0.015)."""
    objective = ScoreEntropy(Uniform(3), Geometric())
    toys = labelled_toys()
    net = guided(LabelledUniformNet(), objective, 1, 1.0)
    result = generate(net, objective, N, 3, SampleSpec(steps=64), generator=torch.Generator().manual_seed(0))
    assert total_variation(toys[1], toys[1].p, result.tokens) < 0.035
    assert 0.5 * (toys[1].p - toys[2].p).abs().sum() > 0.035 + 2 * 0.015


def ar_cfg_law(gamma: float, label: int) -> torch.Tensor:
    """The law of left-to-right sampling with mixed logits, by enumeration: prod_i p_gamma(x_i | x_<i)."""
    toys = labelled_toys()
    seqs = toys[0].seqs
    inputs = torch.cat([torch.full((len(seqs), 1), 3), seqs[:, :2]], dim=1)
    step = cfg_law(ar_log_probs(toys[label], inputs).exp(), ar_log_probs(toys[2], inputs).exp(), gamma)
    return step.gather(-1, seqs[..., None]).squeeze(-1).prod(-1)


@pytest.mark.parametrize("use_cache", [True, False], ids=["kv-cache", "no-cache"])
def test_ar_guidance_samples_its_exact_law(use_cache):
    """AR with mixed logits: gamma 1 samples p(x | y), gamma 2.5 the law prod_i p_gamma(x_i | x_<i).
    With the key/value cache the two passes keep their own keys (CacheView): were they shared, each
    pass would read the other's inputs too. Power: p(x | y) fails the bound against the gamma 2.5 law."""
    objective = AutoRegressive(Absorbing(3), None)
    toy = labelled_toys()[0]
    for gamma in (1.0, 2.5):
        net = guided(LabelledARNet(), objective, 0, gamma)
        spec = SampleSpec(use_cache=use_cache)
        result = generate_ar(net, objective, N, 3, spec, generator=torch.Generator().manual_seed(0))
        assert total_variation(toy, ar_cfg_law(gamma, 0), result.tokens) < BOUND
    assert 0.5 * (ar_cfg_law(2.5, 0) - ar_cfg_law(1.0, 0)).abs().sum() > 2 * BOUND


def test_cache_view_keeps_the_null_pass_apart():
    cache = {"k": 1, "frozen": True}
    view = CacheView(cache)
    assert "k" not in view and view.get("frozen")
    view["k"] = 2
    assert cache == {"k": 1, "frozen": True, "null.k": 2} and dict(view) == {"frozen": True, "k": 2}


# --- training with labels, the run directory, the commands ----------------------------------------


def labelled_fasta(tmp_path, n: int = 80, header: bool = True, tsv: bool = False):
    """A tiny FASTA whose records carry a label (in the header and/or a TSV beside it)."""
    import random

    rng = random.Random(0)
    fasta, table = tmp_path / "lab.fa", tmp_path / "lab.tsv"
    with open(fasta, "w") as f, open(table, "w") as t:
        for i in range(n):
            label = "pos" if i % 2 else "neg"
            seq = "M" + "".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(8)) + ("KKK" if i % 2 else "EEE")
            f.write(f">r{i}" + (f" label={label}" if header else "") + f" some description\n{seq}\n")
            if tsv:
                t.write(f"r{i}\t{label}\n")
    return fasta, table


def train(tmp_path, data, *flags, out="run") -> tuple[int, object]:
    argv = ["train", "--data", str(data), "--out", str(tmp_path / out), "--preset", "tiny", "--steps", "4"]
    argv += ["--batch-size", "8", "--max-len", "16", "--samples", "0", "--quiet", "--eval-every", "2", *flags]
    return main(argv), tmp_path / out


@pytest.mark.parametrize("source", ["headers", "tsv"])
def test_training_with_labels_stores_the_vocabulary_and_evaluates_given_the_label(tmp_path, capsys, source):
    fasta, table = labelled_fasta(tmp_path, header=source == "headers", tsv=source == "tsv")
    code, run = train(tmp_path, fasta, "--labels", "headers" if source == "headers" else str(table))
    assert code == 0
    config = json.loads((run / "config.json").read_text())
    assert config["labels"] == {"names": ["neg", "pos"], "dropout": 0.1} and config["net"]["label_classes"] == 2
    loaded = load_run(run)
    assert loaded.net.label_embed.weight.shape[0] == 3  # two labels and the null label
    assert all(header_label(line) in ("neg", "pos") for line in (run / "heldout.fa").read_text().split("\n")[::2][:-1])
    capsys.readouterr()
    assert main(["eval", str(run), "--json", "--quiet", "--time-samples", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["given"] == "label"
    assert main(["eval", str(run), "--json", "--quiet", "--time-samples", "2", "--null-label"]) == 0
    assert json.loads(capsys.readouterr().out)["given"] == "null label"
    with pytest.raises(UserError, match="its labels are neg, pos"):
        guided_network(loaded, "zzz", 2.0)
    assert guided_network(loaded, "pos", 2.0)(torch.zeros(2, 5, dtype=torch.long)).shape[:2] == (2, 5)


def test_a_run_without_labels_is_as_before_and_refuses_a_condition(tmp_path, capsys):
    """No labels: no `labels` in config.json, no label embedding in the state dict; a config written
    before labels existed (no label_classes) loads; --condition and --null-label are refused."""
    fasta, _ = labelled_fasta(tmp_path, header=False)
    code, run = train(tmp_path, fasta)
    assert code == 0
    config = json.loads((run / "config.json").read_text())
    assert "labels" not in config and "labels" not in config["data"]
    del config["net"]["label_classes"]  # as an old run wrote it
    (run / "config.json").write_text(json.dumps(config))
    loaded = load_run(run)
    assert not any("label" in key for key in loaded.net.state_dict())
    assert RunConfig.read(run).label_names is None
    with pytest.raises(UserError, match="trained without labels"):
        guided_network(loaded, "pos")
    with pytest.raises(UserError, match="--cfg needs --condition"):
        guided_network(loaded, None, 2.0)
    assert guided_network(loaded, None) is loaded.net
    capsys.readouterr()
    assert main(["eval", str(run), "--quiet", "--null-label"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def bad_inputs(tmp_path) -> dict:
    fasta, table = labelled_fasta(tmp_path, header=False, tsv=True)
    lines = table.read_text().splitlines()
    cases = {
        "malformed": ("\n".join([lines[0], "r1\tpos\textra", *lines[2:]]), "lab.tsv:2: expected"),
        "missing": ("\n".join(lines[:5] + lines[6:]), "lab.fa:11: record 'r5' has no label"),
        "unknown record": ("\n".join([*lines, "nosuch\tpos"]), "lab.tsv:81: record 'nosuch' is not in"),
        "twice": ("\n".join([*lines, "r3\tneg"]), "lab.tsv:81: record 'r3' is labelled twice"),
    }
    return {name: (fasta, table, text, message) for name, (text, message) in cases.items()}


@pytest.mark.parametrize("case", ["malformed", "missing", "unknown record", "twice"])
def test_bad_label_tables_stop_with_one_line_naming_file_and_line(tmp_path, capsys, case):
    fasta, table, text, message = bad_inputs(tmp_path)[case]
    table.write_text(text + "\n")
    capsys.readouterr()
    code, run = train(tmp_path, fasta, "--labels", str(table))
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not run.exists()  # nothing written


def test_label_flags_refused_where_they_do_not_apply(tmp_path, capsys):
    fasta, _ = labelled_fasta(tmp_path, header=False)
    code, run = train(tmp_path, fasta, "--label-dropout", "0.2")
    assert code == 2 and "--label-dropout applies with --labels only" in capsys.readouterr().err
    text = tmp_path / "t.txt"
    text.write_text("hello world\n" * 50)
    code, run = train(tmp_path, text, "--labels", "headers", out="text")
    assert code == 2 and "FASTA headers only" in capsys.readouterr().err and not run.exists()
    fasta.write_text(fasta.read_text().replace(">r0 some", ">r0 label=pos some"))
    table = tmp_path / "lab.tsv"
    table.write_text("".join(f"r{i}\t{'pos' if i % 2 else 'neg'}\n" for i in range(80)))
    code, run = train(tmp_path, fasta, "--labels", str(table), out="clash")
    assert code == 2 and "has label=pos in its header but neg in" in capsys.readouterr().err


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_label_dropout_replaces_labels_by_null_at_its_rate(rate):
    """Over 400 steps of 32 records the null fraction is within 4 binomial s.e. of the rate (and not of
    the other rate: power); the other labels are the batch's records' own, in TensorBatches' order."""
    from ddlm.batches import TensorBatches

    labels = torch.arange(100) % 2
    feed = LabelFeed(labels, 32, seed=3, dropout=rate, null=2)
    batches = TensorBatches(torch.arange(100)[:, None], 32, seed=3)
    drawn = torch.stack([feed(step) for step in range(400)])
    fraction = (drawn == 2).double().mean().item()
    se = math.sqrt(rate * (1 - rate) / drawn.numel())
    other = 0.3 if rate == 0.1 else 0.1
    assert abs(fraction - rate) < 4 * se and abs(fraction - other) > 4 * se
    for step in (0, 5, 399):
        kept = drawn[step] != 2
        assert torch.equal(drawn[step][kept], labels[batches(step)[:, 0]][kept])
    assert torch.equal(feed(7), feed(7))  # a function of the step: a resumed run is exact


def test_the_trainer_feeds_each_batch_its_labels(tmp_path):
    from ddlm.config import TrainConfig
    from ddlm.train import Trainer

    cfg = NetConfig(vocab_in=4, vocab_out=3, max_len=3, d_model=8, n_layers=1, n_heads=1, label_classes=2)
    net = Transformer(cfg)
    seen = []
    net.label_embed.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    ids = ToyDistribution().seqs
    train_cfg = TrainConfig(batch_size=8, eval_every=10**6, checkpoint_every=10**6)
    objective = MDLM(Absorbing(3), LogLinear())
    trainer = Trainer(tmp_path, objective, net, ids, ids, lambda x: torch.ones_like(x), train_cfg, torch.device("cpu"))
    trainer.labels = LabelFeed(torch.arange(27) % 2, 8, 0, 0.5, 2)
    trainer.train_step()
    assert torch.equal(seen[-1], trainer.labels(0))
    assert isinstance(Labelled(net, seen[-1]).net, Transformer)


def test_guided_block_diffusion_keeps_each_pass_keys_in_the_prefix_cache():
    """bd3lm: the sampler's block-by-block pass with the prefix's keys and values cached gives the logits
    of the vectorised training pass, under guidance too (both passes' keys cached, selected by row)."""
    from ddlm.objectives.bd3lm import BlockDiffusion, BlockPrefix

    cfg = NetConfig(vocab_in=6, vocab_out=5, max_len=12, d_model=16, n_layers=2, n_heads=2, label_classes=2)
    net = Transformer(cfg).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    objective = BlockDiffusion(Absorbing(5), LogLinear(), block_size=3)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 5, (4, 12), generator=g)
    xt = Absorbing(5).perturb(x0, torch.full((4, 12), 0.7), g)
    wrapped = Guided(net, objective.mix_guided, 1, 2, 2.5)
    with torch.no_grad():
        vectorised = objective.block_logits(wrapped, xt, x0)
        context = BlockPrefix(wrapped, 3, 4, True, "cpu")
        for b in range(4):
            rows = torch.tensor([2, 0, 3, 1])
            alone = context(xt[rows, 3 * b : 3 * b + 3], rows=rows)
            torch.testing.assert_close(vectorised[rows, 3 * b : 3 * b + 3], alone, atol=1e-4, rtol=1e-4)
            context.extend(x0[:, 3 * b : 3 * b + 3])
        unguided = objective.block_logits(Labelled(net, torch.ones(4, dtype=torch.long)), xt, x0)
        assert not torch.allclose(unguided[:, 3:], vectorised[:, 3:], atol=1e-2)  # guidance changes them


def test_a_labelled_run_resumes_bitwise(tmp_path):
    """The labels a step sees and their dropout are a function of the step: 2 steps, then --resume to 4,
    ends with the weights of 4 steps in one go. Power: the same run with another --label-dropout differs."""
    from safetensors.torch import load_file

    fasta, _ = labelled_fasta(tmp_path)
    flags = ["--labels", "headers", "--checkpoint-every", "2", "--precision", "fp32"]

    def model_weights(run):
        tensors = load_file(str(run / "checkpoints" / "step-00000004.safetensors"))
        return {k: v for k, v in tensors.items() if k.startswith("model.")}

    assert train(tmp_path, fasta, *flags, "--label-dropout", "0.5", out="whole")[0] == 0
    assert train(tmp_path, fasta, *flags, "--label-dropout", "0.1", out="other")[0] == 0
    assert train(tmp_path, fasta, *flags, "--label-dropout", "0.5", "--steps", "2", out="halves")[0] == 0
    resume = ["train", "--out", str(tmp_path / "halves"), "--resume", "--steps", "4", "--quiet", "--samples", "0"]
    assert main(resume) == 0
    whole, halves, other = (model_weights(tmp_path / name) for name in ("whole", "halves", "other"))
    assert all(torch.equal(whole[k], halves[k]) for k in whole)
    assert not all(torch.equal(whole[k], other[k]) for k in whole)
