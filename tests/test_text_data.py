"""Tests for ddlm.data.text: sources, char and byte-level BPE tokenizers, packing, held-out split, saving.

Expected values are computed here independently of the module where that is possible: alphabets from
sorted(set(...)), held-out membership from hashlib, character counts from Python's UTF-8 decoder.
No test touches the network: downloads and `datasets` are made to fail inside the test.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA

from ddlm.data import sources
from ddlm.data import text as T
from ddlm.errors import UserError

SHARED = Path(os.environ.get("DDLM_DATA_DIR") or SHARED_DATA)  # as .ci/run sets it, else ../shared/data
needs_shared = pytest.mark.skipif(not (SHARED / "tinystories" / "train.txt").is_file(), reason="no shared data")


@pytest.fixture
def shared_env(monkeypatch):
    monkeypatch.setenv("DDLM_DATA_DIR", str(SHARED))


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty data dir and cache, and no way to download anything."""
    (tmp_path / "data").mkdir()
    monkeypatch.setenv("DDLM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def no_network(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(sources.urllib.request, "urlopen", no_network)
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def sha_heldout(doc: str, fraction: float = 0.05) -> bool:
    return int.from_bytes(hashlib.sha256(doc.encode()).digest()[:8], "big") / 2**64 < fraction


def many_docs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "Lily", "saw", "big", "dog", "café", "naïve", "!", ","]
    docs = []
    for i in range(n):
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(rng.randint(1, 3))]
        docs.append(f"doc {i}: " + "\n".join(lines))  # multi-line documents: inner line breaks are kept
    return docs


def tinystories_head(nbytes: int = 200_000) -> list[str]:
    text = (SHARED / "tinystories" / "train.txt").read_bytes()[:nbytes].decode("utf-8", "ignore")
    return [s for s in re.split(r"(?<=\S)\n(?=\S)", text) if s]


def tinystories_paragraphs(nbytes: int = 200_000) -> list[str]:
    """Paragraphs of the first stories: the documents of a file that joins them with blank lines."""
    return [p for s in tinystories_head(nbytes) for p in re.split(r"\n(?: *\n)+", s) if p.strip()]


# ------------------------------------------------------------------------------------------------
# Character tokenizer


def test_char_round_trip_and_ids():
    train = ["Héllo wörld.\nSecond line", "café — ok"]
    tok = T.TextCharTokenizer.from_text(train)
    alphabet = sorted(set("".join(train)))
    assert tok.alphabet == "".join(alphabet)
    assert tok.vocab_size == len(alphabet) + 2
    assert (tok.eot_id, tok.unk_id) == (len(alphabet), len(alphabet) + 1)
    for doc in train:
        ids = tok.encode(doc)
        assert ids == [alphabet.index(c) for c in doc]
        assert tok.decode(ids) == (doc, True)
    stream, unk = T.encode_stream(tok, train)
    assert unk == 0
    assert stream.tolist() == tok.encode(train[0]) + [tok.eot_id] + tok.encode(train[1])
    assert tok.decode(stream)[0] == train[0] + T.EOT + train[1]
    ids = torch.tensor([[0, 1, 2], [3, 4, 5]])
    assert tok.real_tokens(ids).tolist() == [3, 3]
    # ids outside the vocabulary (a mask token, say) are shown, not dropped
    assert tok.decode([0, tok.vocab_size, 1]) == (alphabet[0] + T.OUT_OF_VOCAB + alphabet[1], True)


def test_char_unknown_characters_are_counted_not_dropped():
    tok = T.TextCharTokenizer("abc")
    ids, unk = tok.encode_counted("abxcz€")
    assert ids.tolist() == [0, 1, tok.unk_id, 2, tok.unk_id, tok.unk_id]
    assert unk == 3
    assert tok.decode(ids)[0] == f"ab{T.UNK}c{T.UNK}{T.UNK}"


def test_unknown_held_out_characters_reported(tmp_path):
    tail = "xyz€ abcabcabcabcabca"
    text = ("abcab " * 70)[:399] + tail  # 420 characters: one document, whose last 5% (21) are held out
    assert len(tail) == 21 and len(text) == 420
    path = write(tmp_path / "one.txt", text)
    held = text[-21:]
    expected = sum(c not in set(text[:-21]) for c in held)
    assert expected == 4
    data = T.load_text(str(path), "char", seq_len=4)
    assert data.info["heldout_unk_chars"] == expected
    assert data.info["heldout_unknown_characters"] == "".join(sorted(set(held) - set(text[:-21])))
    assert data.info["heldout_tokens"] == len(held)  # one token per character: none dropped
    assert (data.heldout == data.tokenizer.unk_id).sum() == sum(c not in set(text[:-21]) for c in held[:20])


# ------------------------------------------------------------------------------------------------
# Byte-level BPE


@needs_shared
def test_bpe_round_trip_save_and_reload(tmp_path):
    docs = tinystories_head()
    tok = T.BPETokenizer.train(docs, 300)
    assert tok.vocab_size == 300
    assert tok.eot_id == 0
    mojibake = [d for d in docs if "â€" in d]
    assert mojibake, "the sample should hold the source's mojibake"
    unseen = "日本語 ✓ 🙂 <|endoftext|> tab\tend\r\n"  # bytes never seen in training, and the literal EOT text
    for doc in docs[:40] + mojibake[:5] + [unseen]:
        ids = tok.encode(doc)
        assert tok.eot_id not in ids
        assert tok.decode(ids) == (doc, True)
    assert len(tok.encode(docs[0])) < len(docs[0])  # merges were learnt
    tok.save_to(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    again = T.tokenizer_from_config(tok.config(), tmp_path)
    for doc in docs[:20] + [unseen]:
        assert again.encode(doc) == tok.encode(doc)
    # retraining on the same text gives the same tokenizer
    assert T.BPETokenizer.train(docs, 300).to_str() == tok.to_str()


def test_bpe_config_checks_the_file(tmp_path):
    tok = T.BPETokenizer.train(many_docs(50), 270)
    tok.save_to(tmp_path)
    cfg = tok.config()
    other = T.BPETokenizer.train(many_docs(50, seed=1) + ["zzzz zzzz zzzz"], 270)
    other.save_to(tmp_path)
    with pytest.raises(UserError, match="tokenizer.json"):
        T.tokenizer_from_config(cfg, tmp_path)
    with pytest.raises(UserError, match="missing"):
        T.tokenizer_from_config(cfg, tmp_path / "nowhere")


def test_bpe_chars_per_id_hand_made():
    tok = T.BPETokenizer.train(["ab ab ab", "b a"], 258)  # 256 bytes + EOT + one merge at most
    # GPT-2's byte map: 'a' -> 'a', 0xC3 -> 'Ã', 0xA9 -> '©'; "é" is the two bytes C3 A9
    a, b, c3, a9 = (tok._tok.token_to_id(s) for s in ("a", "b", "Ã", "©"))
    table = tok.chars_per_id()
    ids = torch.tensor([a, c3, a9, tok.eot_id, b])  # "aé" EOT "b": 4 characters, EOT counting one
    assert int(table[ids].sum()) == 4
    assert int(table[ids[:2]].sum()) == 2  # a block ending inside "é" counts it (its first byte is there)
    assert int(table[ids[2:3]].sum()) == 0  # ... so the block holding only its second byte does not
    assert tok.decode(ids)[0] == "aé" + T.EOT + "b"


def test_bad_tokenizer_specs():
    for spec in ("word", "bpe:", "bpe:100", "bpe:-5", "char:2"):
        with pytest.raises(UserError, match="--tokenizer"):
            T.parse_tokenizer_spec(spec)
    assert T.parse_tokenizer_spec("char") is None
    assert T.parse_tokenizer_spec("bpe:4096") == 4096


# ------------------------------------------------------------------------------------------------
# Packing and chars per token


def test_packing_char_equals_stream_prefix(tmp_path):
    docs = many_docs(200)
    path = write(tmp_path / "docs.txt", "\n\n".join(docs) + "\n")
    data = T.load_text(str(path), "char", seq_len=16)
    train_docs = [d for d in docs if not sha_heldout(d)]
    held_docs = [d for d in docs if sha_heldout(d)]
    alphabet = sorted(set("".join(train_docs)))
    eot = len(alphabet)

    def stream(ds):
        out = []
        for k, d in enumerate(ds):
            out += ([eot] if k else []) + [alphabet.index(c) if c in alphabet else eot + 1 for c in d]
        return out

    for blocks, ds, name in ((data.train, train_docs, "train"), (data.heldout, held_docs, "heldout")):
        s = stream(ds)
        assert blocks.dtype == torch.long
        assert blocks.shape == (len(s) // 16, 16)
        assert blocks.flatten().tolist() == s[: blocks.numel()]
        assert data.info[f"{name}_tokens"] == len(s)
        assert data.info[f"{name}_tokens_dropped"] == len(s) % 16
        assert data.info[f"{name}_chars"] == sum(map(len, ds))
    assert data.info["heldout_chars_per_token"] == 1.0
    assert data.tokenizer.real_tokens(data.heldout).tolist() == [16] * len(data.heldout)


def test_chars_per_token_char_hand_made(tmp_path):
    path = write(tmp_path / "one.txt", "abcd" * 100)  # one document of 400 characters: 20 held out
    data = T.load_text(str(path), "char", seq_len=8)
    assert data.heldout.shape == (2, 8)
    assert data.info["heldout_chars"] == 20
    assert data.info["heldout_tokens_dropped"] == 4
    assert data.info["heldout_kept_chars"] == 16
    assert data.info["heldout_chars_per_token"] == 1.0
    assert data.tokenizer.decode(data.heldout.flatten())[0] == ("abcd" * 100)[380:396]


@needs_shared
def test_packing_bpe_and_chars_per_token(tmp_path):
    docs = tinystories_paragraphs()
    path = write(tmp_path / "ts.txt", "\n\n".join(docs) + "\n")
    data = T.load_text(str(path), "bpe:300", seq_len=32)
    tok = data.tokenizer
    train_docs = [d for d in docs if not sha_heldout(d)]
    held_docs = [d for d in docs if sha_heldout(d)]
    assert len(held_docs) >= 2
    for blocks, ds in ((data.train, train_docs), (data.heldout, held_docs)):
        s = []
        for k, d in enumerate(ds):
            s += ([tok.eot_id] if k else []) + tok.encode(d)
        assert blocks.shape == (len(s) // 32, 32)
        assert blocks.flatten().tolist() == s[: blocks.numel()]
    # Independent count: Python's decoder turns a cut final character into one U+FFFD; EOT counts one
    kept = data.heldout.flatten().tolist()
    text = tok.decode(kept)[0]
    assert data.info["heldout_kept_chars"] == len(text.replace(T.EOT, "#"))
    assert data.info["heldout_chars_per_token"] == pytest.approx(len(text.replace(T.EOT, "#")) / len(kept))
    # over the whole stream the table counts every character and every document break exactly once
    full, _ = T.encode_stream(tok, held_docs)
    assert int(tok.chars_per_id()[full].sum()) == sum(map(len, held_docs)) + len(held_docs) - 1
    assert 1.5 < data.info["heldout_chars_per_token"] < 4


@needs_shared
def test_bpe_run_dir_saved_reused_and_checked(tmp_path):
    docs = tinystories_paragraphs(60_000)
    path = write(tmp_path / "ts.txt", "\n\n".join(docs))
    run = tmp_path / "run"
    a = T.load_text(str(path), "bpe:280", seq_len=16, run_dir=run)
    assert (run / "tokenizer.json").read_text(encoding="utf-8") == a.tokenizer.to_str()
    b = T.load_text(str(path), "bpe:280", seq_len=16, run_dir=run)
    assert torch.equal(a.train, b.train) and torch.equal(a.heldout, b.heldout)
    with pytest.raises(UserError, match="tokenizer.json"):
        T.load_text(str(path), "bpe:290", seq_len=16, run_dir=run)


# ------------------------------------------------------------------------------------------------
# Held-out split of a text file


def test_heldout_split_deterministic_disjoint_and_order_free(tmp_path):
    docs = many_docs(400)
    docs += docs[:30]  # duplicates land on the same side as their first copy
    p1 = write(tmp_path / "a.txt", "\n\n".join(docs) + "\n")
    shuffled = docs[:]
    random.Random(5).shuffle(shuffled)
    p2 = write(tmp_path / "b.txt", "\n\n  \n\n".join(shuffled) + "\n\n\n")  # also several blank lines
    s1, s1b, s2 = T.load_splits(str(p1)), T.load_splits(str(p1)), T.load_splits(str(p2))
    assert (s1.train, s1.heldout) == (s1b.train, s1b.heldout)
    assert s1.train + s1.heldout != [] and sorted(s1.train + s1.heldout) == sorted(docs)  # text unaltered
    assert not set(s1.train) & set(s1.heldout)
    assert s1.heldout == [d for d in docs if sha_heldout(d)]
    assert 0 < len(set(s1.heldout)) < 0.15 * len(set(docs))
    assert sorted(s2.heldout) == sorted(s1.heldout) and sorted(s2.train) == sorted(s1.train)
    assert s1.info["sha256"] == hashlib.sha256(p1.read_bytes()).hexdigest()


def test_single_document_holds_out_last_5_percent(tmp_path):
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    s = T.load_splits(str(write(tmp_path / "one.txt", text + "\n")))
    assert s.train == [text[:950]] and s.heldout == [text[950:]]


def test_max_docs(tmp_path):
    docs = many_docs(300)
    s = T.load_splits(str(write(tmp_path / "a.txt", "\n\n".join(docs))), max_docs=100)
    assert sorted(s.train + s.heldout) == sorted(docs[:100])
    with pytest.raises(UserError, match="--max-docs"):
        T.load_splits("tinyshakespeare", max_docs=10)


def test_validation_part_is_a_salted_hash_of_the_training_documents(tmp_path):
    docs = many_docs(400)
    s = T.load_splits(str(write(tmp_path / "a.txt", "\n\n".join(docs))), validation_fraction=0.1)
    plain = T.load_splits(str(write(tmp_path / "b.txt", "\n\n".join(docs))))
    assert s.heldout == plain.heldout  # the held-out part does not move
    assert sorted(s.train + s.validation) == sorted(plain.train) and not set(s.train) & set(s.validation)
    salted = [
        d
        for d in plain.train
        if hashlib.sha256(("validation:" + d).encode()).digest()[:8] < bytes.fromhex("199999999999999a")
    ]
    assert s.validation == salted  # the lowest 10% of SHA-256("validation:" + text), computed apart
    assert 0.05 * len(plain.train) < len(s.validation) < 0.15 * len(plain.train)
    one = T.load_splits(str(write(tmp_path / "one.txt", "x" * 900 + "y" * 100)), validation_fraction=0.1)
    assert one.validation == [("x" * 900 + "y" * 100)[855:950]] and one.train == ["x" * 855]  # the stream's end
    few = write(tmp_path / "c.txt", "\n\n".join(docs[:200]))
    with pytest.raises(UserError, match=r"--validation-fraction 1e-09: none of the \d+ training documents"):
        T.load_splits(str(few), validation_fraction=1e-9)


# ------------------------------------------------------------------------------------------------
# Named data sets (local shared files)


@needs_shared
def test_tinystories_local(shared_env):
    s = T.load_splits("tinystories")
    train_text = (SHARED / "tinystories" / "train.txt").read_text(encoding="utf-8")
    val_text = (SHARED / "tinystories" / "validation.txt").read_text(encoding="utf-8")
    assert len(s.train) == 1040
    assert "\n".join(s.train) + "\n" == train_text  # only the story breaks (and the final newline) removed
    assert s.heldout == [val_text]  # one continuous stream, unaltered
    assert any("â€™" in d for d in s.train)  # mojibake kept as is
    data = T.load_text("tinystories", "char", seq_len=256)
    alphabet = set(train_text)  # "\n" is in the alphabet: paragraphs inside stories
    assert data.tokenizer.alphabet == "".join(sorted(alphabet))
    assert data.info["heldout_unk_chars"] == sum(c not in alphabet for c in val_text)
    assert data.train.shape == (data.info["train_tokens"] // 256, 256)
    assert data.info["train_tokens"] == len(train_text) - 1  # 1039 EOTs replace 1039 story breaks
    assert T.load_splits("tinystories", max_docs=7).train == s.train[:7]
    small = T.load_splits("tinystories", max_docs=50, validation_fraction=0.05)
    large = T.load_splits("tinystories", max_docs=200, validation_fraction=0.05)
    assert small.validation == large.validation and len(small.validation) > 20  # one part for every N
    assert small.train == large.train[:50] and not set(large.train) & set(large.validation)
    assert sorted(large.validation + T.load_splits("tinystories", validation_fraction=0.05).train) == sorted(s.train)


@needs_shared
def test_tinyshakespeare_and_text8_subset_local(shared_env):
    s = T.load_splits("tinyshakespeare")
    text = (SHARED / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    assert s.train == [text[: len(text) - round(len(text) * 0.1)]] and "".join(s.train + s.heldout) == text
    assert s.info["sha256"] == T.TINYSHAKESPEARE.sha256
    s8 = T.load_splits("text8")
    text8 = (SHARED / "text8_subset" / "text8-100k.txt").read_text(encoding="utf-8")
    assert s8.train == [text8[:90_000]] and s8.heldout == [text8[90_000:]]


# ------------------------------------------------------------------------------------------------
# Saving the held-out split


@pytest.mark.parametrize("tokenizer", ["char", "bpe:270"])
def test_save_and_load_split(tmp_path, tokenizer):
    path = write(tmp_path / "a.txt", "\n\n".join(many_docs(300)))
    run = tmp_path / "run"
    data = T.load_text(str(path), tokenizer, seq_len=16, run_dir=run)
    T.save_split(data, run)
    back = T.load_saved(run)
    assert torch.equal(back.heldout, data.heldout)
    assert back.train.shape == (0, 16) and back.length == 16
    assert back.tokenizer.config() == data.tokenizer.config()
    assert back.info == data.info
    assert back.tokenizer.decode(back.heldout[0]) == data.tokenizer.decode(data.heldout[0])
    assert back.validation is None
    from safetensors.torch import save_file

    run2 = tmp_path / "run2"  # fewer training documents: a BPE of its own
    with_valid = T.load_text(str(path), tokenizer, seq_len=16, run_dir=run2, validation_fraction=0.2)
    T.save_split(with_valid, run2)
    assert torch.equal(T.load_saved(run2).validation, with_valid.validation) and len(with_valid.validation) > 0
    save_file({"heldout": with_valid.heldout}, str(run2 / "heldout.safetensors"))  # the validation part lost
    with pytest.raises(UserError, match="validation: missing"):
        T.load_saved(run2)

    tampered = data.heldout.clone()
    tampered[0, 0] = (tampered[0, 0] + 1) % data.tokenizer.vocab_size
    save_file({"heldout": tampered}, str(run / "heldout.safetensors"))
    with pytest.raises(UserError, match="heldout.safetensors"):
        T.load_saved(run)
    with pytest.raises(UserError, match="text_split.json"):
        T.load_saved(tmp_path / "empty")


# ------------------------------------------------------------------------------------------------
# Errors


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="nope.txt"):
        T.load_text(str(tmp_path / "nope.txt"))
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("first line\ncaf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1\.txt: not UTF-8.*byte 14 \(line 2\)"):
        T.load_text(str(bad))
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="empty.txt: the file is empty"):
        T.load_text(str(empty))
    blank = write(tmp_path / "blank.txt", " \n\n\t\n")
    with pytest.raises(UserError, match="blank.txt"):
        T.load_text(str(blank))
    with pytest.raises(UserError, match="--data"):
        T.load_text(str(tmp_path))  # a directory


def test_block_too_long_and_too_few_documents(tmp_path):
    path = write(tmp_path / "a.txt", "\n\n".join(many_docs(300)))
    with pytest.raises(UserError, match="--seq-len 100000"):
        T.load_text(str(path), "char", seq_len=100_000)
    docs = [d for d in many_docs(400) if not sha_heldout(d)][:5]
    with pytest.raises(UserError, match="few.txt.*held-out"):
        T.load_text(str(write(tmp_path / "few.txt", "\n\n".join(docs))))


def test_tinystories_offline_without_datasets(offline, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(UserError, match="--data tinystories.*DDLM_DATA_DIR") as e:
        T.load_text("tinystories")
    assert "ImportError" in str(e.value) or "ModuleNotFoundError" in str(e.value)


def test_tinystories_offline_datasets_fails(offline, monkeypatch):
    fake = types.ModuleType("datasets")

    def load_dataset(*args, **kwargs):
        assert args[0] == "roneneldan/TinyStories" and kwargs.get("streaming") is True
        raise ConnectionError("offline")

    fake.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.raises(UserError, match="--data tinystories.*offline.*DDLM_DATA_DIR"):
        T.load_text("tinystories")


def test_tinystories_streamed_stories_are_cached(offline, monkeypatch):
    calls = []
    fake = types.ModuleType("datasets")

    def load_dataset(name, split, streaming):
        calls.append(split)
        return iter([{"text": f"{split} story {i}: once upon a time " * 3} for i in range(100)])

    fake.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", fake)
    a = T.load_splits("tinystories", max_docs=20)
    assert len(a.train) == 20 and len(a.heldout) == 2 and calls == ["train", "validation"]
    monkeypatch.setitem(sys.modules, "datasets", None)
    b = T.load_splits("tinystories", max_docs=20)  # from the cache: no datasets needed
    assert (b.train, b.heldout) == (a.train, a.heldout)


def test_downloads_unavailable(offline):
    for name in ("tinyshakespeare", "text8"):
        with pytest.raises(UserError, match=f"--data {name}.*DDLM_DATA_DIR"):
            T.load_text(name)
    with pytest.raises(UserError, match="--data wikitext.*no such file"):
        T.load_text("wikitext")
