"""Text corpora for language modelling: sources, tokenizers (characters or byte-level BPE) and packing.

Sources (`--data`):

- ``tinystories``: ``$DDLM_DATA_DIR/tinystories/{train,validation}.txt`` when both exist. ``train.txt``
  holds one story per line group: stories are split on the regex ``(?<=\\S)\\n(?=\\S)`` (a single line
  break between two non-blank lines; paragraphs inside a story are separated by a blank line). The file's
  final line break is not part of the last story. ``validation.txt`` cannot be split into stories
  exactly (stories and paragraphs are both separated by a blank line), so the held-out split is that whole
  file as one continuous stream. Without local files, the first N stories of the ``train`` and
  ``validation`` splits of ``roneneldan/TinyStories`` are streamed with Hugging Face ``datasets``
  (N = ``max_docs``, default 20000, and max_docs // 10, default 2000), and kept as JSON lines in the
  user cache (``~/.cache/ddlm/tinystories/``) so later runs need no network.
- ``tinyshakespeare``: ``input.txt`` of karpathy/char-rnn (``$DDLM_DATA_DIR``, then the cache, then
  downloaded and checked by SHA-256). One stream; the held-out split is its last 10% of characters.
- ``text8``: ``$DDLM_DATA_DIR/text8_subset/text8-100k.txt`` (the first 100k characters of text8) when it
  exists; the held-out split is then its last 10% of characters. Otherwise the full text8, the zip at
  http://mattmahoney.net/dc/text8.zip (``$DDLM_DATA_DIR/text8/text8.zip``, then the cache, then
  downloaded), split as is standard: the first 90M characters train, the next 5M are the held-out split
  (the last 5M, the usual test split, are not used).
- any other value is a path to a UTF-8 text file. Documents are separated by one or more blank lines
  (lines holding only whitespace); the line breaks inside a document are kept, the separators (and the
  file's final line break) are not. A document is held out when the SHA-256 of its UTF-8 text falls in the
  lowest 5% (`proteins.is_heldout`), so the split does not depend on file order and identical documents
  always land on the same side. A file with a single document holds out its last 5% of characters.

The text is never altered: TinyStories' mojibake (``â€™`` for ``’``) is kept as it is, and so are
whitespace, case and any other oddity. The only thing removed is the document separators named above.

Tokenizers (`--tokenizer`):

- ``char``: `TextCharTokenizer`. The alphabet is the sorted set of characters of the *training* split;
  then the end-of-text token, then ``<unk>``. Held-out characters missing from the training alphabet are
  encoded as ``<unk>`` (one token per character, never dropped) and counted in ``info``.
- ``bpe:N``: `BPETokenizer`, a byte-level BPE (Hugging Face ``tokenizers``) with N tokens in all,
  trained on the training split only; all 256 bytes are in its vocabulary, so nothing is ever unknown.
  It is saved as ``RUN/tokenizer.json``.

In both, the end-of-text token (EOT) is added only between documents: a literal ``<|endoftext|>`` in
the text is encoded as ordinary characters/bytes, and `decode` shows the EOT as ``<|endoftext|>``.

Validation (`--validation-fraction F`, for checkpoint choice and early stopping): a third part, apart from
the training and held-out ones. Of many documents, those whose SHA-256 of ``"validation:" + text`` falls in
the lowest F (salted, so independent of the held-out choice); of one stream, the last F of the training
characters. For TinyStories read from disk the validation stories are chosen among all of ``train.txt``'s
stories before ``--max-docs`` takes the first N of the rest, so runs of different N share one validation
part; elsewhere they are chosen among the training documents that ``--max-docs`` kept.

Packing: the documents of a split are joined with EOT (``d1 EOT d2 EOT ... dn``, no EOT after the last),
the token stream is cut into consecutive sequences of ``seq_len`` tokens (`--seq-len`) and the last partial
one is dropped (``info["<split>_tokens_dropped"]``). Every position of a sequence is a real token.

Labels (`--labels FILE`, a text file's documents only, for classifier-free guidance): line i of FILE is
the label (one word) of document i of the file, counted before ``--max-docs``. Each part is then packed
label by label (the documents of one label joined and cut on their own), so every sequence is text of
one label, and the held-out and validation sequences keep theirs for ``ddlm eval``'s bound given the label.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..rundir import HELDOUT_TENSORS, TEXT_SPLIT, TOKENIZER
from .proteins import is_heldout
from .sources import RemoteFile, cache_dir, read_user_text, resolve, sha256_of
from .splits import digest
from .tokenizers import CharTokenizer

EOT = "<|endoftext|>"
UNK = "<unk>"
OUT_OF_VOCAB = "\ufffd"  # how `decode` shows an id outside the vocabulary (for example a mask token)
NAMES = ("tinystories", "tinyshakespeare", "text8")

TINYSHAKESPEARE = RemoteFile(
    name="tinyshakespeare",
    relpath="tinyshakespeare/input.txt",
    url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
)
TEXT8 = RemoteFile(name="text8", relpath="text8/text8.zip", url="http://mattmahoney.net/dc/text8.zip", sha256=None)
TEXT8_SUBSET = "text8_subset/text8-100k.txt"
TINYSTORIES_HF = "roneneldan/TinyStories"
TINYSTORIES_STORY_BREAK = re.compile(r"(?<=\S)\n(?=\S)")
BLANK_LINES = re.compile(r"\n(?:[^\S\n]*\n)+")  # a line break followed by one or more whitespace-only lines

STREAM_HELDOUT_FRACTION = 0.10  # tinyshakespeare, text8 subset
PATH_HELDOUT_FRACTION = 0.05  # documents of a PATH.txt file (or characters of a single-document file)


# ------------------------------------------------------------------------------------------------
# Tokenizers


class TextCharTokenizer:
    """Characters of the training text (ids 0..n-1, in the given order), then EOT (n), then <unk> (n+1).

    `encode` maps characters outside the alphabet to <unk>; `encode_counted` also returns how many.
    `decode` shows EOT as ``<|endoftext|>``, <unk> as ``<unk>`` and ids outside the vocabulary as U+FFFD.
    """

    markers = False  # no BOS/EOS/PAD: packed sequences are all real tokens
    bos_id = eos_id = pad_id = None

    def __init__(self, alphabet: str):
        if len(set(alphabet)) != len(alphabet) or not alphabet:
            raise UserError(f"character tokenizer: the alphabet must be non-empty and without repeats: {alphabet!r}")
        self.alphabet = alphabet
        self.eot_id = len(alphabet)
        self.unk_id = len(alphabet) + 1
        codes = np.frombuffer(alphabet.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        self._order = np.argsort(codes, kind="stable")
        self._codes = codes[self._order]

    @classmethod
    def from_text(cls, texts: list[str]) -> TextCharTokenizer:
        return cls("".join(sorted(set().union(*map(set, texts)))))

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet) + 2

    def config(self) -> dict:
        return {"type": "text-char", "alphabet": self.alphabet}

    def encode_counted(self, text: str) -> tuple[np.ndarray, int]:
        """int64 ids of `text` and the number of characters that became <unk>."""
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        pos = np.minimum(np.searchsorted(self._codes, codes), len(self._codes) - 1)
        known = self._codes[pos] == codes
        ids = np.where(known, self._order[pos], self.unk_id).astype(np.int64)
        return ids, int((~known).sum())

    def encode(self, text: str) -> list[int]:
        return self.encode_counted(text)[0].tolist()

    def decode(self, ids: list[int] | torch.Tensor) -> tuple[str, bool]:
        """The text of `ids`; always well formed (True): any sequence of tokens is text."""
        n = len(self.alphabet)
        out = []
        for i in (int(i) for i in ids):
            if 0 <= i < n:
                out.append(self.alphabet[i])
            else:
                out.append(EOT if i == self.eot_id else UNK if i == self.unk_id else OUT_OF_VOCAB)
        return "".join(out), True

    def real_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """[N] number of real tokens per row: every position of a packed sequence."""
        return torch.full(ids.shape[:1], ids.shape[1], dtype=torch.long)

    def chars_per_id(self) -> torch.Tensor:
        """[V] characters each token stands for: 1 for every token (EOT stands for the document break)."""
        return torch.ones(self.vocab_size, dtype=torch.long)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, which the ByteLevel pre-tokenizer uses."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def _import_tokenizers():
    try:
        import tokenizers
    except ImportError as e:
        raise UserError(
            f"--tokenizer bpe:N needs the Hugging Face tokenizers package ({e}); pip install 'tokenizers>=0.19'"
        ) from None
    return tokenizers


class BPETokenizer:
    """Byte-level BPE: ByteLevel pre-tokenizer (no prefix space) and decoder, EOT as its only special token.

    Decoding a sequence that starts or ends inside a multi-byte character shows U+FFFD for the partial bytes.
    """

    FILE = TOKENIZER
    markers = False
    bos_id = eos_id = pad_id = None

    def __init__(self, tok, source: str = "memory"):
        self._tok = tok
        self._tok.encode_special_tokens = True  # a literal "<|endoftext|>" in the text is just text
        eot = tok.token_to_id(EOT)
        if eot is None:
            raise UserError(f"{source}: the BPE tokenizer has no {EOT} token")
        self.eot_id = eot
        self._json = tok.to_str()

    @classmethod
    def train(cls, docs: list[str], vocab_size: int) -> BPETokenizer:
        tk = _import_tokenizers()
        tok = tk.Tokenizer(tk.models.BPE())
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT],
            initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is unknown
            show_progress=False,
        )
        tok.train_from_iterator(docs, trainer, length=len(docs))
        return cls(tok)

    @classmethod
    def load(cls, path: Path) -> BPETokenizer:
        tk = _import_tokenizers()
        try:
            tok = tk.Tokenizer.from_file(str(path))
        except Exception as e:
            raise UserError(f"{path}: not a readable tokenizers JSON file ({e})") from None
        return cls(tok, source=str(path))

    def to_str(self) -> str:
        return self._json

    def save_to(self, run_dir: Path) -> Path:
        path = Path(run_dir) / self.FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self._json, encoding="utf-8")
        return path

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def config(self) -> dict:
        sha = hashlib.sha256(self._json.encode("utf-8")).hexdigest()
        return {"type": "bpe", "vocab_size": self.vocab_size, "file": self.FILE, "sha256": sha}

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int] | torch.Tensor) -> tuple[str, bool]:
        """The text of `ids` (EOT shown as ``<|endoftext|>``); always well formed (True)."""
        ids = [int(i) for i in ids]
        V = self.vocab_size
        parts, run = [], []
        for i in ids:
            if 0 <= i < V:
                run.append(i)
            else:  # the tokenizers library would skip it silently
                parts.append(self._tok.decode(run, skip_special_tokens=False) if run else "")
                parts.append(OUT_OF_VOCAB)
                run = []
        parts.append(self._tok.decode(run, skip_special_tokens=False) if run else "")
        return "".join(parts), True

    def real_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """[N] number of real tokens per row: every position of a packed sequence."""
        return torch.full(ids.shape[:1], ids.shape[1], dtype=torch.long)

    def chars_per_id(self) -> torch.Tensor:
        """[V] characters each token stands for: the number of UTF-8 lead bytes (bytes that start a
        character) among its bytes, so a character split across tokens is counted once, in the token
        holding its first byte; EOT counts 1 (it stands for the document break)."""
        byte_of = {c: b for b, c in _bytes_to_unicode().items()}
        out = torch.zeros(self.vocab_size, dtype=torch.long)
        for token, i in self._tok.get_vocab(with_added_tokens=True).items():
            if i == self.eot_id:
                out[i] = 1
            else:
                out[i] = sum(1 for c in token if (byte_of[c] & 0xC0) != 0x80)
        return out


TextTokenizer = TextCharTokenizer | BPETokenizer


def tokenizer_from_config(cfg: dict, run_dir: Path) -> TextTokenizer | CharTokenizer:
    """Rebuild a tokenizer from its `config()`; a BPE is read from `run_dir` and checked by SHA-256."""
    kind = cfg.get("type")
    if kind == "text-char":
        return TextCharTokenizer(cfg["alphabet"])
    if kind == "char":
        return CharTokenizer(cfg["alphabet"], cfg.get("markers", True))
    if kind == "bpe":
        path = Path(run_dir) / cfg.get("file", BPETokenizer.FILE)
        if not path.is_file():
            raise UserError(f"{path}: the run's BPE tokenizer file is missing")
        tok = BPETokenizer.load(path)
        if cfg.get("sha256") and tok.config()["sha256"] != cfg["sha256"]:
            raise UserError(f"{path}: this is not the tokenizer the run was trained with (SHA-256 differs)")
        return tok
    raise UserError(f"tokenizer config: unknown type {kind!r} (expected text-char, char or bpe)")


def parse_tokenizer_spec(spec: str) -> int | None:
    """None for "char", N for "bpe:N"."""
    if spec == "char":
        return None
    m = re.fullmatch(r"bpe:(\d+)", spec)
    if not m:
        raise UserError(f"--tokenizer {spec}: expected char or bpe:N (for example bpe:4096)")
    n = int(m.group(1))
    if n < 257:
        raise UserError(f"--tokenizer {spec}: a byte-level BPE needs N >= 257 (256 bytes and the end-of-text token)")
    return n


# ------------------------------------------------------------------------------------------------
# Sources


@dataclass
class TextSplits:
    """The documents of each split, before tokenization."""

    train: list[str]
    heldout: list[str]
    info: dict = field(default_factory=dict)
    validation: list[str] = field(default_factory=list)
    label_of: dict[str, str] | None = None  # with --labels: each document's label, by its text


def carve_validation(docs: list[str], fraction: float) -> tuple[list[str], list[str], str]:
    """(training, validation, how it was chosen): the documents whose salted SHA-256 falls in the lowest
    `fraction`, or, of a single document, its last `fraction` of characters."""
    if len(docs) == 1:
        train, valid = _split_stream(docs[0], fraction)
        return [train], [valid], f"the last {fraction:g} of the training characters"
    valid = [d for d in docs if digest("validation:" + d) < fraction]
    train = [d for d in docs if digest("validation:" + d) >= fraction]
    if not valid or not train:
        side = "validation" if not valid else "training"
        raise UserError(
            f"--validation-fraction {fraction:g}: none of the {len(docs)} training documents falls in the {side} "
            "part (chosen by SHA-256); use more documents or another fraction"
        )
    return train, valid, f"{fraction:g} of the training documents, chosen by SHA-256 of their text"


def _with_validation(splits: TextSplits, fraction: float) -> TextSplits:
    if not fraction or splits.validation:
        return splits
    train, valid, how = carve_validation(splits.train, fraction)
    return TextSplits(train, splits.heldout, {**splits.info, "validation_split": how}, valid, splits.label_of)


def read_text_file(path: Path, flag: str | None = None) -> str:
    """The UTF-8 text of `path`; UserError naming the flag and file if it is unreadable or empty."""
    where = f"{flag} {path}" if flag else str(path)
    text = read_user_text(path, where)
    if not text.strip():
        raise UserError(f"{where}: the file is empty" if not text else f"{where}: the file holds only whitespace")
    return text


def _without_final_newline(text: str) -> str:
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


def _split_stream(text: str, fraction: float) -> tuple[str, str]:
    n_held = max(1, round(len(text) * fraction))
    return text[:-n_held], text[-n_held:]


def _local(relpath: str) -> Path | None:
    data_dir = os.environ.get("DDLM_DATA_DIR")
    if data_dir and (Path(data_dir) / relpath).is_file():
        return Path(data_dir) / relpath
    return None


def _check_max_docs(name: str, max_docs: int | None) -> None:
    if max_docs is not None:
        raise UserError(f"--max-docs {max_docs}: --data {name} is one continuous text, it has no documents to count")


def _tinystories(max_docs: int | None, validation_fraction: float = 0.0) -> TextSplits:
    train_path, val_path = _local("tinystories/train.txt"), _local("tinystories/validation.txt")
    if max_docs is not None and max_docs < 1:
        raise UserError(f"--max-docs {max_docs}: must be at least 1")
    if train_path and val_path:
        stories = TINYSTORIES_STORY_BREAK.split(_without_final_newline(read_text_file(train_path, "--data")))
        stories = [s for s in stories if s]
        total, valid, how = len(stories), [], {}
        if validation_fraction:  # before --max-docs, so that runs of any N share one validation part
            stories, valid, chosen = carve_validation(stories, validation_fraction)
            how = {"validation_split": chosen + " (all of the file's stories, before --max-docs)"}
        stories = stories[:max_docs] if max_docs else stories
        return TextSplits(
            stories,
            [read_text_file(val_path, "--data")],
            {
                "source": str(train_path),
                "sha256": sha256_of(train_path),
                "heldout_source": str(val_path),
                "heldout_sha256": sha256_of(val_path),
                "documents_in_file": total,
                "heldout_split": "validation.txt as one continuous stream (story boundaries are not recoverable)",
                **how,
            },
            valid,
        )
    n_train = max_docs or 20000
    n_val = max(1, n_train // 10) if max_docs else 2000
    train = _hf_tinystories("train", n_train)
    val = _hf_tinystories("validation", n_val)
    return TextSplits(
        [s for s in train if s],
        [s for s in val if s],
        {
            "source": f"hf:{TINYSTORIES_HF} train[:{n_train}]",
            "heldout_source": f"hf:{TINYSTORIES_HF} validation[:{n_val}]",
            "empty_stories_skipped": sum(1 for s in train + val if not s),
            "heldout_split": f"the first {n_val} stories of the validation split",
        },
    )


def _hf_tinystories(split: str, n: int) -> list[str]:
    """The first `n` stories of a TinyStories split: from the user cache, else streamed and then cached."""
    cached = cache_dir() / "tinystories" / f"hf-{split}-{n}.jsonl"
    if cached.is_file():
        with open(cached, encoding="utf-8") as f:
            return [json.loads(line) for line in f]
    data_dir = os.environ.get("DDLM_DATA_DIR")
    looked = f"{data_dir}/tinystories/{{train,validation}}.txt" if data_dir else "$DDLM_DATA_DIR (not set)"
    try:
        import datasets

        ds = datasets.load_dataset(TINYSTORIES_HF, split=split, streaming=True)
        stories = [row["text"] for row in itertools.islice(ds, n)]
    except Exception as e:  # not installed, offline, hub error: all mean "not available"; say why
        raise UserError(
            f"--data tinystories: not found in {looked} and streaming {TINYSTORIES_HF} ({split}) with Hugging Face "
            f"datasets failed ({type(e).__name__}: {e}). Set DDLM_DATA_DIR to a folder holding "
            "tinystories/train.txt and tinystories/validation.txt, or install datasets and go online, "
            "or pass --data PATH to a local text file."
        ) from None
    cached.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cached.parent, suffix=".part")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(s) + "\n" for s in stories)
    os.replace(tmp, cached)
    return stories


def _tinyshakespeare(max_docs: int | None) -> TextSplits:
    _check_max_docs("tinyshakespeare", max_docs)
    path = resolve(TINYSHAKESPEARE)
    train, held = _split_stream(read_text_file(path, "--data"), STREAM_HELDOUT_FRACTION)
    info = {"source": str(path), "sha256": sha256_of(path), "heldout_split": "the last 10% of the characters"}
    return TextSplits([train], [held], info)


def _text8(max_docs: int | None) -> TextSplits:
    _check_max_docs("text8", max_docs)
    subset = _local(TEXT8_SUBSET)
    if subset:
        train, held = _split_stream(read_text_file(subset, "--data"), STREAM_HELDOUT_FRACTION)
        info = {
            "source": str(subset),
            "sha256": sha256_of(subset),
            "heldout_split": "the last 10% of the characters of the 100k-character text8 subset",
        }
        return TextSplits([train], [held], info)
    path = resolve(TEXT8)
    try:
        with zipfile.ZipFile(path) as z:
            text = z.read("text8").decode("utf-8")
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError) as e:
        raise UserError(f"--data text8: {path} is not the text8 zip (a zip holding the file text8): {e}") from None
    if len(text) != 100_000_000:
        raise UserError(f"--data text8: {path} holds {len(text)} characters, expected 100,000,000")
    info = {
        "source": str(path),
        "sha256": sha256_of(path),
        "heldout_split": "characters 90M..95M (standard validation split; the last 5M test characters are unused)",
    }
    return TextSplits([text[:90_000_000]], [text[90_000_000:95_000_000]], info)


def _text_file(path: Path, max_docs: int | None, labels: str | None = None) -> TextSplits:
    text = read_text_file(path, "--data")
    docs = [d for d in BLANK_LINES.split(_without_final_newline(text)) if d.strip()]
    total = len(docs)
    label_of = read_document_labels(labels, docs, path) if labels else None
    if max_docs is not None:
        if max_docs < 1:
            raise UserError(f"--max-docs {max_docs}: must be at least 1")
        docs = docs[:max_docs]
    info = {"source": str(path), "sha256": sha256_of(path), "documents_in_file": total}
    if len(docs) == 1:
        train, held = _split_stream(docs[0], PATH_HELDOUT_FRACTION)
        return TextSplits([train], [held], {**info, "heldout_split": "one document: its last 5% of characters"})
    train = [d for d in docs if not is_heldout(d, PATH_HELDOUT_FRACTION)]
    held = [d for d in docs if is_heldout(d, PATH_HELDOUT_FRACTION)]
    if not train or not held:
        raise UserError(
            f"--data {path}: none of its {len(docs)} documents (separated by blank lines) falls in the "
            f"{'held-out' if not held else 'training'} split (5% of documents, chosen by SHA-256); add documents, "
            "or remove the blank lines to make it one document whose last 5% of characters are held out"
        )
    info["heldout_split"] = "5% of documents, chosen by SHA-256 of their text"
    return TextSplits(train, held, info, label_of=label_of)


def read_document_labels(path: str, docs: list[str], data: Path) -> dict[str, str]:
    """document text -> label, from a labels file: line i (one word) labels document i of `data` (its
    documents as separated by blank lines, counted before --max-docs). A label count that is not the
    document count, a blank or many-word line, or one text labelled two ways is a UserError naming
    the file and line."""
    lines = _without_final_newline(read_user_text(path, f"--labels {path}")).splitlines()
    if len(docs) == 1:
        raise UserError(f"--labels {path}: {data} is one document (no blank lines); labels need documents")
    if len(lines) != len(docs):
        raise UserError(
            f"--labels {path}: {len(lines)} lines, but {data} has {len(docs)} documents (separated by blank "
            "lines); give one label per line, line i for document i"
        )
    first: dict[str, tuple[str, int]] = {}  # document text -> (label, line) where it first appears
    for n, (doc, line) in enumerate(zip(docs, lines, strict=True), start=1):
        label = line.strip()
        if len(label.split()) != 1:
            raise UserError(f"{path}:{n}: expected one label (one word) for document {n}, got {line!r}")
        earlier, m = first.setdefault(doc, (label, n))
        if earlier != label:
            raise UserError(
                f"{path}:{n}: document {n} is the same text as document {m}, labelled {earlier!r} there and "
                f"{label!r} here"
            )
    return {doc: label for doc, (label, _) in first.items()}


def load_splits(
    spec: str, max_docs: int | None = None, validation_fraction: float = 0.0, labels: str | None = None
) -> TextSplits:
    """The train, held-out and (with `validation_fraction`) validation documents of `--data spec` (a data
    set name or a text file's path), and with `labels` (a text file's only) each document's label."""
    if labels and spec in NAMES:
        raise UserError(
            f"--labels {labels}: labels name the documents of a text file (--data FILE.txt, documents "
            f"separated by blank lines), not of --data {spec}; write its documents to such a file"
        )
    if spec == "tinystories":
        splits = _tinystories(max_docs, validation_fraction)
    elif spec == "tinyshakespeare":
        splits = _tinyshakespeare(max_docs)
    elif spec == "text8":
        splits = _text8(max_docs)
    else:
        path = Path(spec)
        if not path.exists():
            raise UserError(f"--data {spec}: not a data set name ({', '.join(NAMES)}) and no such file")
        splits = _text_file(path, max_docs, labels)
    splits = _with_validation(splits, validation_fraction)
    splits.info = {"data": spec, **splits.info}
    return splits


# ------------------------------------------------------------------------------------------------
# Tokenize and pack


@dataclass
class TextData:
    tokenizer: TextTokenizer
    length: int  # seq_len
    train: torch.Tensor  # [N, length] int64
    heldout: torch.Tensor  # [M, length] int64
    info: dict
    validation: torch.Tensor | None = None  # [K, length] int64, with --validation-fraction
    # with --labels: part ("train", "heldout", "validation") -> the label of each of its sequences
    labels: dict[str, list[str]] | None = None


def encode_stream(tokenizer: TextTokenizer, docs: list[str]) -> tuple[torch.Tensor, int]:
    """[T] ids of the documents joined with EOT (d1 EOT d2 ... dn), and the number of <unk> characters."""
    if isinstance(tokenizer, BPETokenizer):
        encoded = [np.asarray(ids, dtype=np.int64) for ids in tokenizer.encode_batch(docs)]
        unk = 0
    else:
        pairs = [tokenizer.encode_counted(d) for d in docs]
        encoded, unk = [p[0] for p in pairs], sum(p[1] for p in pairs)
    eot = np.array([tokenizer.eot_id], dtype=np.int64)
    parts = [encoded[0]] if encoded else []
    for ids in encoded[1:]:
        parts += [eot, ids]
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return torch.from_numpy(stream), unk


def pack(stream: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, int]:
    """[N, seq_len] consecutive sequences of `stream`, and the number of tokens dropped at the end."""
    n = stream.numel() // seq_len
    return stream[: n * seq_len].reshape(n, seq_len).clone(), stream.numel() - n * seq_len


@dataclass
class Packed:
    """One part's documents as sequences: `labels` (with --labels) the label of each sequence."""

    sequences: torch.Tensor
    labels: list[str] | None
    tokens: int  # of the joined stream(s), EOTs included
    dropped: int
    unk: int


def pack_part(tok: TextTokenizer, docs: list[str], seq_len: int, label_of: dict[str, str] | None) -> Packed:
    """The documents joined with EOT and cut into sequences. With labels, the documents of each label
    (in sorted order) are joined and cut on their own, so that every sequence is text of one label: the
    training pairs (x, y) of a model of p(x | y)."""
    if label_of is None:
        stream, unk = encode_stream(tok, docs)
        sequences, dropped = pack(stream, seq_len)
        return Packed(sequences, None, stream.numel(), dropped, unk)
    names = sorted(set(label_of.values()))
    groups = [pack_part(tok, [d for d in docs if label_of[d] == y], seq_len, None) for y in names]
    labels = [y for y, g in zip(names, groups, strict=True) for _ in range(len(g.sequences))]
    sequences = torch.cat([g.sequences for g in groups]) if groups else torch.zeros(0, seq_len, dtype=torch.long)
    return Packed(sequences, labels, *(sum(getattr(g, k) for g in groups) for k in ("tokens", "dropped", "unk")))


def load_text(
    spec: str,
    tokenizer: str = "char",
    seq_len: int = 256,
    run_dir: Path | None = None,
    max_docs: int | None = None,
    validation_fraction: float = 0.0,
    labels: str | None = None,
) -> TextData:
    """Read `--data spec`, build the tokenizer on the training split, and pack both splits into sequences.

    A BPE tokenizer is trained on the training split and, with `run_dir`, saved as RUN/tokenizer.json; if
    that file already exists it must be the same tokenizer (same data, same N), else UserError. With
    `labels` (a labels file of a text file's documents) each part is packed label by label (`pack_part`)
    and `labels` of the result gives each sequence's label.

    `info` has, per split (train, heldout): documents, chars (characters of the documents, separators
    excluded), tokens (the whole stream, EOTs included), sequences, tokens_dropped; and heldout_unk_chars
    (characters outside the training alphabet, char tokenizer only) with the distinct ones.

    ``heldout_chars_per_token = heldout_kept_chars / (heldout sequences * seq_len)``, where
    ``heldout_kept_chars`` is the number of characters the kept held-out tokens stand for: each character
    token, <unk> and EOT counts 1; a BPE token counts the UTF-8 lead bytes among its bytes (a character
    split across tokens counts once, in the token holding its first byte); EOT counts 1 as it stands for a
    document break. So bits per character = bits per token / heldout_chars_per_token, over the same
    kept sequences. It is exactly 1 for the char tokenizer.
    """
    if seq_len < 1:
        raise UserError(f"--seq-len {seq_len}: must be at least 1")
    splits = load_splits(spec, max_docs, validation_fraction, labels)
    tok = _build_tokenizer(splits.train, tokenizer, spec, run_dir)
    train, held = (pack_part(tok, docs, seq_len, splits.label_of) for docs in (splits.train, splits.heldout))
    for name, part in (("training", train), ("held-out", held)):
        if len(part.sequences) == 0:
            raise UserError(
                f"--data {spec}: the {name} split has {part.tokens} tokens, fewer than one sequence of "
                f"--seq-len {seq_len}"
            )
    kept_chars = int(tok.chars_per_id()[held.sequences].sum())
    unknown = ""
    if held.unk:
        alphabet = set(tok.alphabet)
        unknown = "".join(sorted({c for d in splits.heldout for c in d} - alphabet))
    info = {
        **splits.info,
        "tokenizer": tokenizer,
        "vocab_size": tok.vocab_size,
        "seq_len": seq_len,
        "train_documents": len(splits.train),
        "heldout_documents": len(splits.heldout),
        "train_chars": sum(map(len, splits.train)),
        "heldout_chars": sum(map(len, splits.heldout)),
        "train_tokens": train.tokens,
        "heldout_tokens": held.tokens,
        "train_sequences": len(train.sequences),
        "heldout_sequences": len(held.sequences),
        "train_tokens_dropped": train.dropped,
        "heldout_tokens_dropped": held.dropped,
        "heldout_unk_chars": held.unk,
        "heldout_unknown_characters": unknown,
        "heldout_kept_chars": kept_chars,
        "heldout_chars_per_token": kept_chars / held.sequences.numel(),
        **({"labels": labels, "labels_sha256": sha256_of(Path(labels))} if labels else {}),
    }
    valid = _pack_validation(tok, splits, seq_len, spec, info) if splits.validation else None
    labels_of = {"train": train.labels, "heldout": held.labels} | ({"validation": valid.labels} if valid else {})
    return TextData(
        tok, seq_len, train.sequences, held.sequences, info, None if valid is None else valid.sequences,
        labels_of if splits.label_of else None,
    )  # fmt: skip


def _build_tokenizer(train: list[str], tokenizer: str, spec: str, run_dir: Path | None) -> TextTokenizer:
    """The char tokenizer of the training text, or a BPE tokenizer trained on it; with `run_dir`, the
    BPE one is saved as RUN/tokenizer.json, and one already there must be the same (else UserError)."""
    n_bpe = parse_tokenizer_spec(tokenizer)
    if n_bpe is None:
        return TextCharTokenizer.from_text(train)
    tok = BPETokenizer.train(train, n_bpe)
    if run_dir is None:
        return tok
    path = Path(run_dir) / BPETokenizer.FILE
    if not path.is_file():
        tok.save_to(run_dir)
    elif BPETokenizer.load(path).to_str() != tok.to_str():
        raise UserError(
            f"{path}: the run directory holds a different tokenizer than the one trained now from "
            f"--data {spec} --tokenizer {tokenizer}; use a new run directory"
        )
    return BPETokenizer.load(path)


def _pack_validation(tok: TextTokenizer, splits: TextSplits, seq_len: int, spec: str, info: dict) -> Packed:
    """The validation documents packed as the other parts are; their counts go to info["validation"]."""
    docs = splits.validation
    part = pack_part(tok, docs, seq_len, splits.label_of)
    if len(part.sequences) == 0:
        raise UserError(
            f"--data {spec}: the validation part has {part.tokens} tokens, fewer than one sequence of "
            f"--seq-len {seq_len}; raise --validation-fraction"
        )
    info["validation"] = {"documents": len(docs), "chars": sum(map(len, docs)), "tokens": part.tokens,
                          "sequences": len(part.sequences), "tokens_dropped": part.dropped,
                          "unk_chars": part.unk}  # fmt: skip
    return part


# ------------------------------------------------------------------------------------------------
# The held-out split of a run


def _tensor_sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def save_split(data: TextData, run_dir: Path) -> None:
    """RUN/heldout.safetensors (the held-out sequences), RUN/text_split.json (info, tokenizer config, checksum)
    and, for BPE, RUN/tokenizer.json: all that evaluation needs to score exactly the same tokens."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(data.tokenizer, BPETokenizer):
        path = run_dir / BPETokenizer.FILE
        if not path.is_file() or path.read_text(encoding="utf-8") != data.tokenizer.to_str():
            data.tokenizer.save_to(run_dir)
    parts = {"heldout": data.heldout.to(torch.long).contiguous()}
    if data.validation is not None:
        parts["validation"] = data.validation.to(torch.long).contiguous()
    save_file(parts, str(run_dir / HELDOUT_TENSORS))
    record = {"seq_len": data.length, "tokenizer": data.tokenizer.config()}
    for name, t in parts.items():
        record.update({f"{name}_shape": list(t.shape), f"{name}_sha256": _tensor_sha256(t)})
    if data.labels is not None:  # what `eval` gives the bound of each held-out sequence
        record["labels"] = {name: data.labels[name] for name in parts}
    record["info"] = data.info
    (run_dir / TEXT_SPLIT).write_text(json.dumps(record, indent=1, ensure_ascii=False), encoding="utf-8")


def load_saved(run_dir: Path) -> TextData:
    """The run's tokenizer, held-out and validation sequences as `save_split` stored them (train is an
    empty [0, L] tensor)."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    split_path, held_path = run_dir / TEXT_SPLIT, run_dir / HELDOUT_TENSORS
    try:
        record = json.loads(split_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{split_path}: missing; this run has no saved text split") from None
    except ValueError as e:
        raise UserError(f"{split_path}: not valid JSON ({e})") from None
    tok = tokenizer_from_config(record["tokenizer"], run_dir)
    try:
        tensors = load_file(str(held_path))
        heldout = tensors["heldout"]
    except FileNotFoundError:
        raise UserError(f"{held_path}: missing; this run has no saved held-out split") from None
    except Exception as e:
        raise UserError(f"{held_path}: not a readable safetensors file with a 'heldout' tensor ({e})") from None
    L = record["seq_len"] if "seq_len" in record else record["block_size"]  # runs before the rename
    names = ["heldout"] + (["validation"] if "validation_sha256" in record else [])
    for name in names:
        t = tensors.get(name)
        if (
            t is None
            or t.dtype != torch.long
            or list(t.shape) != record[f"{name}_shape"]
            or _tensor_sha256(t) != record[f"{name}_sha256"]
        ):
            raise UserError(
                f"{held_path}: does not match {split_path} ({name}: missing, or shape, dtype or SHA-256 differ)"
            )
        if t.numel() and (t.min() < 0 or t.max() >= tok.vocab_size):
            raise UserError(f"{held_path}: holds ids outside the tokenizer's {tok.vocab_size} tokens")
    labels = record.get("labels")
    if labels is not None and any(len(labels.get(name, ())) != len(tensors[name]) for name in names):
        raise UserError(f"{split_path}: its labels do not match the sequences of {held_path}")
    validation = tensors["validation"] if "validation" in names else None
    return TextData(tok, L, torch.zeros(0, L, dtype=torch.long), heldout, record["info"], validation, labels)
