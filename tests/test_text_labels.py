"""Labelled text (`--labels FILE` on a text file): line i labels document i; every packed sequence is
text of one label; the held-out and validation sequences keep their labels for `eval`; a run learns
p(text | label) well enough that `--condition` moves its samples; bad labels files stop with one line.

The packing is checked against an independent count (each label's documents joined with EOT, cut into
floor(tokens / L) sequences), and every sequence against the documents of its own label by its
characters: documents of label "a" are written in the letters a-e, those of "b" in v-z.
"""

import json
import random

import pytest

from ddlm.cli import main
from ddlm.data.proteins import is_heldout
from ddlm.data.text import load_saved, load_text
from ddlm.errors import UserError

SEQ = 16
OTHER = {"abcde": "vwxyz", "vwxyz": "abcde"}


def labelled_text(tmp_path, n: int = 120, seed: int = 0):
    """n documents of 20-60 characters; even ones label 'a' (letters a-e), odd ones 'b' (letters v-z)."""
    rng = random.Random(seed)
    docs, labels = [], []
    for i in range(n):
        letters = "abcde" if i % 2 == 0 else "vwxyz"
        docs.append("".join(rng.choice(letters) for _ in range(rng.randint(20, 60))))
        labels.append("a" if i % 2 == 0 else "b")
    text, table = tmp_path / "docs.txt", tmp_path / "docs.labels"
    text.write_text("\n\n".join(docs) + "\n")
    table.write_text("\n".join(labels) + "\n")
    return text, table, docs, labels


def test_every_sequence_is_text_of_its_own_label(tmp_path):
    text, table, docs, labels = labelled_text(tmp_path)
    data = load_text(str(text), "char", SEQ, validation_fraction=0.1, labels=str(table))
    label_of = dict(zip(docs, labels, strict=True))
    parts = {"train": data.train, "heldout": data.heldout, "validation": data.validation}
    seen = 0
    for name, seqs in parts.items():
        assert len(data.labels[name]) == len(seqs) > 0
        eot = data.tokenizer.eot_id
        for row, label in zip(seqs, data.labels[name], strict=True):
            chars = set(data.tokenizer.decode(row[row != eot])[0])
            assert chars <= set("abcde" if label == "a" else "vwxyz")
        seen += len(seqs)
    # independently: a part's documents of each label, joined with EOT, give floor(tokens / SEQ) sequences
    for name in parts:
        expected = 0
        for y in ("a", "b"):
            part_docs = [d for d in docs if label_of[d] == y and in_part(d, name, data)]
            tokens = sum(len(d) for d in part_docs) + max(len(part_docs) - 1, 0)
            expected += tokens // SEQ
            assert data.labels[name].count(y) == tokens // SEQ
        assert len(parts[name]) == expected
    assert data.info["labels"] == str(table) and seen > 0


def in_part(doc: str, name: str, data) -> bool:
    """Is `doc` in the part `name`? By the split's own rules, computed here from the hashes."""
    from ddlm.data.proteins import is_heldout
    from ddlm.data.splits import digest

    if is_heldout(doc, 0.05):
        return name == "heldout"
    return name == ("validation" if digest("validation:" + doc) < 0.1 else "train")


def test_save_and_load_keep_the_labels_and_refuse_a_mismatch(tmp_path):
    from ddlm.data.text import save_split

    text, table, _, _ = labelled_text(tmp_path)
    data = load_text(str(text), "char", SEQ, validation_fraction=0.1, labels=str(table))
    run = tmp_path / "run"
    save_split(data, run)
    saved = load_saved(run)
    assert saved.labels == {"heldout": data.labels["heldout"], "validation": data.labels["validation"]}
    record = json.loads((run / "text_split.json").read_text())
    record["labels"]["heldout"] = record["labels"]["heldout"][:-1]
    (run / "text_split.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match="labels do not match"):
        load_saved(run)


def train_argv(text, out, *flags, steps: int = 4):
    argv = ["train", "--data", str(text), "--out", str(out), "--preset", "tiny", "--seq-len", str(SEQ)]
    return argv + ["--steps", str(steps), "--batch-size", "16", "--samples", "0", "--quiet", *flags]


def test_a_labelled_text_run_evaluates_given_the_label_and_conditions_its_samples(tmp_path, capsys):
    """End to end: config, eval given the label (and --null-label), samples under --condition. After 300
    steps of a tiny MDLM the samples follow the label: >= 90% of the sequences sampled given 'a' are
    mostly a-e and given 'b' mostly v-z (the tiny model still puts a few letters of the other set inside a
    sequence); a sampler that ignored the label would draw the same law for both, and could not pass both."""
    text, table, _, _ = labelled_text(tmp_path, n=200)
    run = tmp_path / "run"
    flags = ("--labels", str(table), "--objective", "mdlm", "--validation-fraction", "0.1", "--eval-every", "50")
    assert main(train_argv(text, run, *flags, steps=300)) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["labels"]["names"] == ["a", "b"] and config["data"]["labels"] == str(table)
    capsys.readouterr()
    assert main(["eval", str(run), "--json", "--quiet", "--time-samples", "2"]) == 0
    given = json.loads(capsys.readouterr().out)
    assert main(["eval", str(run), "--json", "--quiet", "--time-samples", "2", "--null-label"]) == 0
    null = json.loads(capsys.readouterr().out)
    assert given["given"] == "label" and null["given"] == "null label"
    assert given["bits_per_token"] < null["bits_per_token"]  # knowing the letters' set is worth bits
    for label, letters in (("a", "abcde"), ("b", "vwxyz")):
        argv = ["sample", str(run), "--n", "32", "--steps", str(SEQ), "--condition", label, "--json", "--quiet"]
        assert main(argv) == 0
        samples = json.loads(capsys.readouterr().out)["samples"]
        ours = [sum(c in letters for c in s) > sum(c in OTHER[letters] for c in s) for s in samples]
        assert sum(ours) >= 0.9 * len(samples), (label, sum(ours))


def test_resume_refuses_changed_labels(tmp_path, capsys):
    text, table, _, labels = labelled_text(tmp_path)
    run = tmp_path / "run"
    assert main(train_argv(text, run, "--labels", str(table))) == 0
    # one training document relabelled: the held-out and validation labels are as they were
    docs = text.read_text().rstrip("\n").split("\n\n")
    first_train = next(i for i, d in enumerate(docs) if not is_heldout(d, 0.05))
    changed = list(labels)
    changed[first_train] = "c"
    table.write_text("\n".join(changed) + "\n")
    capsys.readouterr()
    assert main(train_argv(text, run, "--labels", str(table), "--resume", steps=6)) == 2
    assert "the labels have changed" in capsys.readouterr().err
    table.write_text("\n".join(labels) + "\n")
    assert main(train_argv(text, run, "--labels", str(table), "--resume", steps=6)) == 0


def bad_cases(tmp_path):
    text, table, docs, labels = labelled_text(tmp_path, n=30)
    dup = tmp_path / "dup.txt"
    dup.write_text("\n\n".join([*docs, docs[0]]) + "\n")
    one = tmp_path / "one.txt"
    one.write_text("a single document with no blank line " * 10 + "\n")
    return {
        "too few lines": (text, "\n".join(labels[:-1]), "29 lines, but"),
        "two words": (text, "\n".join(["a b", *labels[1:]]), ":1: expected one label"),
        "blank line": (text, "\n".join([labels[0], "", *labels[2:]]), ":2: expected one label"),
        "same text, two labels": (dup, "\n".join([*labels, "b"]), ":31: document 31 is the same text as document 1"),
        "one document": (one, "a", "is one document"),
        "a named data set": ("tinystories", "a", "not of --data tinystories"),
        "headers": (text, None, "FASTA headers only"),
    }


CASES = ["too few lines", "two words", "blank line", "same text, two labels", "one document", "a named data set"]


@pytest.mark.parametrize("case", [*CASES, "headers"])
def test_bad_labels_files_stop_with_one_line_and_write_nothing(tmp_path, capsys, case):
    data, content, message = bad_cases(tmp_path)[case]
    labels = tmp_path / "bad.labels"
    if content is not None:
        labels.write_text(content + "\n")
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(train_argv(data, out, "--labels", str(labels) if content is not None else "headers")) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()
