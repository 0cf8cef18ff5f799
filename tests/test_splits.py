"""Splits by hash and by identity (MMseqs2), a validation part, --train-records, --keep-best and --patience."""

import json
import random
import shutil

import pytest
import torch
from conftest import train_argv

from ddlm.checkpoint import CheckpointDir
from ddlm.cli import main
from ddlm.data import proteins, splits
from ddlm.data.fasta import write_fasta
from ddlm.data.text import load_saved as text_split
from ddlm.errors import UserError
from ddlm.run import load_run

needs_mmseqs = pytest.mark.skipif(shutil.which("mmseqs") is None, reason="MMseqs2 not on PATH")
AMINO = proteins.AMINO_ACIDS


def identity(a: str, b: str) -> float:
    """The fraction of equal sites: the true identity of these substitution-only, equal-length variants
    (an independent check on MMseqs2's alignments)."""
    assert len(a) == len(b)
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def family(tmp_path, groups=30, members=5, length=80, seed=0):
    """`groups` unrelated random sequences, each with `members` copies mutated at 8% of their sites (so
    about 92% identical within a group, about 5% between groups)."""
    rng = random.Random(seed)
    ids, seqs = [], []
    for g in range(groups):
        base = [rng.choice(AMINO) for _ in range(length)]
        for k in range(members):
            seq = [rng.choice(AMINO) if rng.random() < 0.08 else c for c in base]
            ids.append(f"g{g}_m{k}"), seqs.append("".join(seq))
    path = tmp_path / "family.fa"
    write_fasta(path, ids, seqs)
    return path


def test_hash_split_is_the_split_of_earlier_runs(tmp_path):
    """Without new flags the test part is the sequences whose SHA-256 falls below the fraction, as it
    always was; a validation part is the next band and leaves the test part as it is."""
    path = family(tmp_path)
    plain = proteins.load_proteins(str(path), 127, heldout_fraction=0.2)
    everything = plain.train_seqs + plain.heldout_seqs
    assert set(plain.heldout_seqs) == {s for s in everything if proteins.is_heldout(s, 0.2)}
    assert "split" not in plain.info and not plain.valid_seqs
    with_valid = proteins.load_proteins(str(path), 127, plan=proteins.SplitPlan("hash", 0.2, 0.2))
    assert with_valid.heldout_seqs == plain.heldout_seqs
    assert set(with_valid.valid_seqs) == {s for s in plain.train_seqs if 0.2 <= splits.digest(s) < 0.4}
    assert not set(with_valid.valid_seqs) & set(with_valid.train_seqs)
    assert with_valid.info["split"] == "hash" and with_valid.info["validation"] == len(with_valid.valid_seqs)


class GivenUnits(splits.Split):
    """A split whose clusters are given: the order in which `assign` deals them is what is tested."""

    name = "given"

    def __init__(self, units):
        super().__init__(None)
        self.given = units

    def units(self, seqs):
        return self.given


def test_a_cluster_comes_early_whatever_its_size():
    """50 clusters of 20 and 1,000 singletons; the test part takes 5% (100 records). Dealt with every
    cluster equally likely to come first, the part holds many clusters, mostly singletons (the old order,
    by the smallest hash of the members, deals the big clusters first: it fails with 24 clusters)."""
    rng = random.Random(3)
    seqs = ["".join(rng.choice(AMINO) for _ in range(30)) for _ in range(2000)]
    units = [list(range(20 * c, 20 * c + 20)) for c in range(50)] + [[i] for i in range(1000, 2000)]
    parts = GivenUnits(units).assign(seqs, 0.05, 0.05)
    for part in (splits.TEST, splits.VALID):
        held = [u for u in units if parts[u[0]] == part]
        big = sum(len(u) == 20 for u in held)
        assert sum(map(len, held)) == 100 and len(held) > 40 and big < len(held) / 2, (part, len(held), big)


def max_identity_to_train(data) -> list[float]:
    return [max(identity(t, s) for s in data.train_seqs) for t in data.heldout_seqs + data.valid_seqs]


@needs_mmseqs
def test_identity_split_keeps_each_group_on_one_side(tmp_path):
    """Every held-out or validation record is < 50% identical to every training record (an independent
    alignment), and whole groups move; the hash split of the same records fails that check."""
    path = family(tmp_path)
    data = proteins.load_proteins(str(path), 127, plan=proteins.SplitPlan("identity:0.5", 0.2, 0.2))
    assert data.info["clusters"] == 30 and data.info["test_records_with_a_train_hit"] == 0
    group = {name: name.split("_")[0] for name in data.train_ids + data.heldout_ids + data.valid_ids}
    sides = [{group[i] for i in ids} for ids in (data.train_ids, data.heldout_ids, data.valid_ids)]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert len(data.heldout_ids) == 30 and len(data.valid_ids) == 30  # six whole groups of five each
    assert max(max_identity_to_train(data)) < 0.5
    hashed = proteins.load_proteins(str(path), 127, plan=proteins.SplitPlan("hash", 0.2, 0.2))
    assert max(max_identity_to_train(hashed)) > 0.8


def mutate(seq: str, rate: float, rng: random.Random) -> str:
    return "".join(rng.choice(AMINO) if rng.random() < rate else c for c in seq)


@needs_mmseqs
def test_leaks_are_the_test_records_with_a_close_training_record():
    """count_leaks against the independent alignment: close relatives (~92% identical) count, distant
    ones (~43%) and unrelated ones do not."""
    rng = random.Random(1)
    bases = ["".join(rng.choice(AMINO) for _ in range(90)) for _ in range(6)]
    test = bases
    train = [mutate(bases[0], 0.08, rng), mutate(bases[1], 0.08, rng), mutate(bases[2], 0.6, rng)]
    train += ["".join(rng.choice(AMINO) for _ in range(90)) for _ in range(5)]
    close = [max(identity(t, s) for s in train) for t in test]
    assert sorted(close)[-2] > 0.8 and sorted(close)[-3] < 0.5  # two close, the rest far: a fair check
    assert splits.count_leaks(test, train, 0.5) == sum(c >= 0.5 for c in close) == 2


def test_train_records_is_a_fixed_subset_whatever_the_order(tmp_path):
    path = family(tmp_path)
    a = proteins.load_proteins(str(path), 127, plan=proteins.SplitPlan(None, 0.1, 0.0, train_records=20))
    lines = path.read_text().split(">")[1:]
    (tmp_path / "reversed.fa").write_text("".join(">" + r for r in reversed(lines)))
    b = proteins.load_proteins(str(tmp_path / "reversed.fa"), 127, plan=proteins.SplitPlan(None, 0.1, 0.0, None, None))
    assert len(a.train_seqs) == 20 and a.info["train_available"] == len(b.train_seqs)
    lowest = sorted(b.train_seqs, key=splits.digest)[:20]
    assert set(a.train_seqs) == set(lowest)
    with pytest.raises(UserError, match="--train-records 500: the training part has"):
        proteins.load_proteins(str(path), 127, plan=proteins.SplitPlan(None, 0.1, 0.0, train_records=500))


def test_bad_split_specs_are_refused():
    for spec, message in (("bogus", "unknown split"), ("identity:1.5", "in \\(0, 1\\]"), ("identity:x", "number")):
        with pytest.raises(UserError, match=message):
            splits.split_from_spec(spec)


def test_identity_split_without_mmseqs_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="needs MMseqs2 on PATH"):
        splits.split_from_spec("identity:0.5").units(["MKV", "MKL"])


def test_evaluate_keeps_the_best_and_spends_patience(tmp_path):
    from ddlm.config import TrainConfig
    from ddlm.networks import NetConfig, Transformer
    from ddlm.objectives import MDLM
    from ddlm.processes import Absorbing
    from ddlm.schedules import LogLinear
    from ddlm.train import Trainer

    torch.manual_seed(0)
    net = Transformer(NetConfig(vocab_in=6, vocab_out=5, max_len=8, d_model=16, n_layers=1, n_heads=2))
    ids = torch.randint(0, 5, (40, 8))
    cfg = TrainConfig(batch_size=8, keep_best=True, patience=2)
    count = lambda x: torch.ones_like(x)  # noqa: E731
    trainer = Trainer(tmp_path, MDLM(Absorbing(5), LogLinear()), net, ids, ids[:8], count, cfg, torch.device("cpu"))
    trainer.eval_part = "valid"
    figures = iter([3.0, 2.0, 2.5, 1.5, 1.6, 1.7])
    trainer.heldout_bits = lambda: {"bits_per_token": next(figures)}
    spent = []
    for step in range(1, 7):
        trainer.step = step * 5
        with torch.no_grad():
            next(trainer.ema_net.parameters()).fill_(step)  # tells the saved weights apart
        spent.append(trainer.evaluate())
    assert spent == [False, False, False, False, False, True]
    assert trainer.best == {"step": 20, "bits": 1.5, "epoch": 20 * 8 / 40}
    best = CheckpointDir(tmp_path).best()
    assert best.step == 20 and best.meta["valid_bits_per_token"] == 1.5
    first = next(name for name, _ in trainer.ema_net.named_parameters())
    assert float(best.section("ema")[first].flatten()[0]) == 4.0
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["valid_bits_per_token"] for r in lines] == [3.0, 2.0, 2.5, 1.5, 1.6, 1.7]
    assert lines[0]["epoch"] == 5 * 8 / 40


def test_keep_best_run_is_evaluated_and_sampled_at_its_best(tmp_path):
    """A protein run with --keep-best: eval and sample load checkpoints/best.*, and --resume keeps it."""
    out = tmp_path / "run"
    data = family(tmp_path, groups=20, members=4)
    flags = dict(
        steps=30, eval_every=10, keep_best=True, validation_fraction=0.2, samples=0, batch_size=8, objective="ar"
    )
    assert main(train_argv(data, out, **flags)) == 0
    best = CheckpointDir(out).best()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    valid = {r["step"]: r["valid_bits_per_token"] for r in records if "valid_bits_per_token" in r}
    assert best.step == min(valid, key=valid.get) and (out / "valid.fa").is_file()
    # a best that differs from every checkpoint (halved weights, an earlier step): eval/sample load it
    halved = {f"ema.{k}": v / 2 for k, v in best.section("ema").items()}
    CheckpointDir(out).save_best(7, halved, {"valid_bits_per_token": 1.0, "epoch": 1.0})
    loaded = load_run(out)
    assert loaded.checkpoint.step == 7
    assert all(torch.equal(v, halved[f"ema.{k}"]) for k, v in loaded.net.state_dict().items())
    assert load_run(out, weights="model").checkpoint.step == 30  # the raw weights are the newest checkpoint's
    assert main(["train", "--out", str(out), "--resume", "--steps", "60", "--samples", "0", "--quiet"]) == 0
    # the resumed run goes on from its checkpoint's record of the best (not from the file planted above)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    valid = {r["step"]: r["valid_bits_per_token"] for r in records if "valid_bits_per_token" in r}
    assert sorted(valid) == [10, 20, 30, 40, 50, 60]
    assert CheckpointDir(out).best().step == min(valid, key=valid.get)


@pytest.mark.parametrize(
    "flags, message",
    [
        (dict(split="bogus"), "unknown split"),
        (dict(keep_best=True, validation_fraction=0), "--validation-fraction"),
        (dict(train_records=10_000), "--train-records 10000: the training part has"),
    ],
)
def test_bad_split_flags_stop_with_one_line_and_write_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert main(train_argv(family(tmp_path), out, steps=2, **flags)) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_split_flags_on_text_data_are_refused(tmp_path, capsys):
    text = tmp_path / "story.txt"
    text.write_text("once upon a time " * 200)
    assert main(train_argv(text, tmp_path / "run", steps=2, split="identity:0.5")) == 2
    assert "--split: applies to FASTA data only" in capsys.readouterr().err


def test_text_run_keeps_its_best_on_a_validation_part(tmp_path):
    """Text with --patience: a validation part of 5% of the documents is carved and saved, chosen on, kept
    by --keep-best, checked again on --resume; the held-out part is the one a run without it has."""
    text = tmp_path / "stories.txt"
    words = "the cat sat on a mat and then a dog ran to the park with a red ball".split()
    rng = random.Random(0)
    text.write_text("\n\n".join(" ".join(rng.choices(words, k=30)) for _ in range(300)))
    out = tmp_path / "run"
    flags = dict(steps=20, eval_every=5, keep_best=True, patience=50, samples=0, seq_len=32, objective="mdlm")
    assert main(train_argv(text, out, **flags)) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["validation_fraction"] == 0.05
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    valid = {r["step"]: r["valid_bits_per_token"] for r in records if "valid_bits_per_token" in r}
    assert sorted(valid) == [5, 10, 15, 20] and CheckpointDir(out).best().step == min(valid, key=valid.get)
    plain = tmp_path / "plain"
    assert main(train_argv(text, plain, steps=1, samples=0, seq_len=32)) == 0
    assert torch.equal(text_split(out).heldout, text_split(plain).heldout) and text_split(plain).validation is None
    assert main(["train", "--out", str(out), "--resume", "--steps", "25", "--samples", "0", "--quiet"]) == 0
    # a new story that lands in the validation part (not the held-out one): --resume refuses the changed text
    new = next(
        d for d in (" ".join(rng.choices(words, k=30)) for _ in range(10_000))
        if splits.digest("validation:" + d) < 0.05 and not proteins.is_heldout(d, 0.05)
    )  # fmt: skip
    text.write_text(text.read_text() + "\n\n" + new)
    assert main(["train", "--out", str(out), "--resume", "--steps", "30", "--samples", "0", "--quiet"]) == 2


def test_eval_part_validation_scores_the_whole_validation_part(tmp_path, capsys):
    """`ddlm eval --part validation` is the bound on all of the validation part (training evaluates a
    subset), computed here again from the saved part with the same time draws; eval.json keeps the
    test figure; a run without a validation part refuses the flag with one line."""
    from ddlm.evaluate.likelihood import evaluate_bound

    text = tmp_path / "stories.txt"
    words = "the cat sat on a mat and then a dog ran to the park with a red ball".split()
    rng = random.Random(1)
    text.write_text("\n\n".join(" ".join(rng.choices(words, k=30)) for _ in range(300)))
    out = tmp_path / "run"
    assert main(train_argv(text, out, steps=4, samples=0, seq_len=32, objective="mdlm", validation_fraction=0.2)) == 0
    capsys.readouterr()
    argv = ["eval", str(out), "--json", "--quiet", "--time-samples", "2", "--precision", "fp32"]
    assert main([*argv, "--part", "validation"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert not (out / "eval.json").exists() and result["part"] == "validation"
    part = text_split(out).validation
    loaded = load_run(out)
    direct = evaluate_bound(loaded.net, loaded.objective, part, torch.ones_like(part, dtype=torch.bool), 2, seed=0)
    assert result["sequences"] == len(part) and result["bits_per_token"] == pytest.approx(direct["bits_per_token"])
    assert main(argv) == 0
    held = json.loads(capsys.readouterr().out)
    assert held["part"] == "heldout" and abs(held["bits_per_token"] - result["bits_per_token"]) > 1e-6
    assert json.loads((out / "eval.json").read_text())["bits_per_token"] == held["bits_per_token"]
    plain = tmp_path / "plain"
    assert main(train_argv(text, plain, steps=1, samples=0, seq_len=32)) == 0
    capsys.readouterr()
    assert main(["eval", str(plain), "--part", "validation", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "has no validation part" in err and err.count("\n") == 1
