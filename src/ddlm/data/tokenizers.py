"""Character tokenizer with optional start/end markers and padding to a fixed length."""

from __future__ import annotations

import torch

from ..errors import UserError


class CharTokenizer:
    """Tokens 0..len(alphabet)-1 are the characters; then BOS, EOS and PAD when `markers` is True.

    A record becomes [BOS, c_1 .. c_n, EOS, PAD ...] of a fixed length; the "real" tokens, which
    likelihoods are divided by, are the characters and the end marker (what an AR model predicts).
    """

    def __init__(self, alphabet: str, markers: bool = True):
        self.alphabet = alphabet
        self.markers = markers
        self.index = {c: i for i, c in enumerate(alphabet)}
        n = len(alphabet)
        self.bos_id, self.eos_id, self.pad_id = (n, n + 1, n + 2) if markers else (None, None, None)

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet) + (3 if self.markers else 0)

    def config(self) -> dict:
        return {"type": "char", "alphabet": self.alphabet, "markers": self.markers}

    def encode(self, text: str) -> list[int]:
        try:
            return [self.index[c] for c in text]
        except KeyError as e:
            raise UserError(f"character {e.args[0]!r} is not in the alphabet {self.alphabet!r}") from None

    def encode_padded(self, records: list[str], length: int) -> torch.Tensor:
        """[N, length] ids: BOS + record + EOS, then PAD."""
        out = torch.full((len(records), length), self.pad_id, dtype=torch.long)
        out[:, 0] = self.bos_id
        for row, rec in enumerate(records):
            if len(rec) + 2 > length:
                raise UserError(f"record {row + 1} has {len(rec)} characters; at most {length - 2} fit")
            out[row, 1 : len(rec) + 1] = torch.tensor(self.encode(rec), dtype=torch.long)
            out[row, len(rec) + 1] = self.eos_id
        return out

    def frame(self, lengths: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[n, length] clamp and values of records with these character counts: BOS at 0, EOS at n + 1 and
        PAD after are held (clamp True), the n character positions in between are free (value 0)."""
        positions = torch.arange(length)
        lengths = torch.as_tensor(lengths, dtype=torch.long)[:, None]
        values = torch.where(positions <= lengths + 1, self.eos_id, self.pad_id).expand(len(lengths), -1).clone()
        values[:, 0] = self.bos_id
        clamp = (positions == 0) | (positions > lengths)
        return clamp, torch.where(clamp, values, 0)

    def real_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Number of real tokens per row: characters plus the end marker (not BOS, not PAD)."""
        if not self.markers:
            return torch.full(ids.shape[:1], ids.shape[1], dtype=torch.long)
        return ((ids != self.bos_id) & (ids != self.pad_id)).sum(-1)

    def decode(self, ids: list[int] | torch.Tensor) -> tuple[str, bool]:
        """The characters after BOS up to the first non-character token, and whether the row is
        well formed: BOS, at least one character, EOS, then only PAD."""
        ids = [int(i) for i in ids]
        if not self.markers:
            return "".join(self.alphabet[i] if i < len(self.alphabet) else "?" for i in ids), True
        n = len(self.alphabet)
        body = ids[1:] if ids and ids[0] == self.bos_id else ids
        end = next((k for k, i in enumerate(body) if i >= n), len(body))
        text = "".join(self.alphabet[i] for i in body[:end])
        rest = body[end:]
        valid = (
            bool(ids)
            and ids[0] == self.bos_id
            and end > 0
            and bool(rest)
            and rest[0] == self.eos_id
            and all(i == self.pad_id for i in rest[1:])
        )
        return text, valid
