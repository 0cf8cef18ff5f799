"""Data: where `--data acyp` comes from, FASTA validation, the split, the tokenizer."""

import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA

from ddlm.data import proteins, sources
from ddlm.data.fasta import read_fasta
from ddlm.data.tokenizers import CharTokenizer
from ddlm.errors import UserError

ACYP_FILE = SHARED_DATA / "acyp" / "hypf.fa"
needs_acyp = pytest.mark.skipif(not ACYP_FILE.is_file(), reason="shared ACYP data not beside the repo")


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """No data dir, an empty cache, and a download address that refuses at once."""
    monkeypatch.delenv("DDLM_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(
        proteins, "ACYP", sources.RemoteFile("acyp", "acyp/hypf.fa", "http://127.0.0.1:9/hypf.fa", proteins.ACYP.sha256)
    )


def test_acyp_offline_and_missing_is_one_clear_error(no_network):
    with pytest.raises(UserError) as e:
        proteins.load_proteins("acyp")
    assert "--data acyp" in str(e.value) and "DDLM_DATA_DIR" in str(e.value)


@needs_acyp
def test_acyp_from_data_dir_first(monkeypatch, no_network):
    monkeypatch.setenv("DDLM_DATA_DIR", str(SHARED_DATA))
    assert sources.resolve(proteins.ACYP) == ACYP_FILE


@needs_acyp
def test_acyp_download_is_verified_and_cached(monkeypatch, tmp_path, no_network):
    served = tmp_path / "www"
    served.mkdir()
    (served / "hypf.fa").write_bytes(ACYP_FILE.read_bytes())
    (served / "tampered.fa").write_bytes(ACYP_FILE.read_bytes() + b">x\nMK\n")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(served), **kw)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        bad = sources.RemoteFile("acyp", "acyp/hypf.fa", f"{base}/tampered.fa", proteins.ACYP.sha256)
        with pytest.raises(UserError, match="SHA-256"):
            sources.resolve(bad)
        assert not (tmp_path / "cache/ddlm/acyp/hypf.fa").exists()  # a bad download is never kept
        good = sources.RemoteFile("acyp", "acyp/hypf.fa", f"{base}/hypf.fa", proteins.ACYP.sha256)
        path = sources.resolve(good)
        assert path == tmp_path / "cache/ddlm/acyp/hypf.fa"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == proteins.ACYP.sha256
    finally:
        server.shutdown()
    # the cache now answers without the network
    assert sources.resolve(proteins.ACYP) == path


@needs_acyp
def test_acyp_split_is_deduplicated_deterministic_and_disjoint(monkeypatch):
    monkeypatch.setenv("DDLM_DATA_DIR", str(SHARED_DATA))
    a = proteins.load_proteins("acyp")
    b = proteins.load_proteins("acyp")
    assert a.heldout_seqs == b.heldout_seqs
    assert not set(a.train_seqs) & set(a.heldout_seqs)
    assert len(set(a.train_seqs)) == len(a.train_seqs)
    assert a.info["duplicates_removed"] == 26_856 - 23_274  # the data README's counts
    assert len(a.train_seqs) + len(a.heldout_seqs) == 23_274
    assert 0.04 < len(a.heldout_seqs) / 23_274 < 0.06


def test_split_does_not_depend_on_file_order(tmp_path, family):
    lines = family.read_text().splitlines()
    records = [lines[i : i + 2] for i in range(0, len(lines), 2)]
    reversed_file = tmp_path / "rev.fa"
    reversed_file.write_text("\n".join(line for rec in reversed(records) for line in rec) + "\n")
    a = proteins.load_proteins(str(family), max_residues=48)
    b = proteins.load_proteins(str(reversed_file), max_residues=48)
    assert sorted(a.heldout_seqs) == sorted(b.heldout_seqs)


@pytest.mark.parametrize(
    "content,needle",
    [
        (">a\nMKV\n>b\n\n>c\nMK\n", "record 'b': empty sequence"),
        (">a\nMKV\n>long\n" + "M" * 20 + "\n", "length 20 exceeds the maximum 10"),
        (">a\nMKvL\n", "letter 'v' at position 3"),
        ("MKVL\n", "before the first '>'"),
        ("", "no valid FASTA records"),
    ],
)
def test_bad_fasta_names_file_record_and_position(tmp_path, content, needle):
    path = tmp_path / "x.fa"
    path.write_text(content)
    with pytest.raises(UserError) as e:
        read_fasta(path, proteins.RESIDUES, max_len=10)
    assert needle in str(e.value) and "x.fa" in str(e.value)


def test_skip_invalid_counts_and_never_alters(tmp_path):
    path = tmp_path / "x.fa"
    path.write_text(">a\nMKV\n>b\nMK*V\n>c\nmkv\n>d\nMKVW\n")
    records = read_fasta(path, proteins.RESIDUES, max_len=10, skip_invalid=True)
    assert records.seqs == ["MKV", "MKVW"] and len(records.skipped) == 2


def test_binary_file_is_a_clear_error(tmp_path):
    path = tmp_path / "x.fa"
    path.write_bytes(b"\xff\xfe\x00>x")
    with pytest.raises(UserError, match="not UTF-8 text"):
        read_fasta(path, proteins.RESIDUES, max_len=10)


def test_multiline_records_are_joined(tmp_path):
    path = tmp_path / "x.fa"
    path.write_text(">a desc\nMKV\nLLA\n\n>b\nW\n")
    records = read_fasta(path, proteins.RESIDUES, max_len=10)
    assert records.ids == ["a", "b"] and records.seqs == ["MKVLLA", "W"]


def test_tokenizer_round_trip_and_real_token_count():
    tok = CharTokenizer(proteins.RESIDUES)
    ids = tok.encode_padded(["MKV", "A"], 8)
    assert ids[0].tolist() == [tok.bos_id, *tok.encode("MKV"), tok.eos_id, tok.pad_id, tok.pad_id, tok.pad_id]
    assert tok.real_tokens(ids).tolist() == [4, 2]  # residues + end marker
    assert tok.decode(ids[0]) == ("MKV", True)
    broken = ids[0].clone()
    broken[5] = tok.encode("A")[0]  # a residue after the end marker
    assert tok.decode(broken) == ("MKV", False)
    assert tok.decode(torch.full((8,), tok.pad_id)) == ("", False)


def test_data_readme_counts_hold_for_the_file():
    if not ACYP_FILE.is_file():
        pytest.skip("shared data not present")
    records = read_fasta(ACYP_FILE, proteins.RESIDUES, max_len=127)
    assert len(records.seqs) == 26_856 and max(map(len, records.seqs)) == 127
    assert Path(ACYP_FILE).stat().st_size == 2_865_850


def test_utf8_byte_order_mark_is_not_content(tmp_path):
    path = tmp_path / "bom.fa"
    path.write_bytes(b"\xef\xbb\xbf>a\nMKV\n")
    assert read_fasta(path, proteins.RESIDUES, max_len=10).seqs == ["MKV"]
