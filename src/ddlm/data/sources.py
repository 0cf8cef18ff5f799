"""Where named data sets come from: `$DDLM_DATA_DIR`, then the user cache, then the public source.

Downloads are verified by SHA-256 before they are kept, so a cached file is always the real one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError


@dataclass(frozen=True)
class RemoteFile:
    name: str  # the --data name
    relpath: str  # under $DDLM_DATA_DIR and the cache
    url: str
    sha256: str | None


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ddlm"


def read_user_text(path: str | os.PathLike, where: str | None = None) -> str:
    """The UTF-8 text of a file the user named (a leading byte-order mark is encoding, not content).

    Every failure is a UserError that starts with `where` (default: the path) and says what is wrong:
    missing, a directory, unreadable, or the first byte that is not UTF-8 with its line number."""
    where = where or os.fspath(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{where}: is a directory, not a file") from None
    except OSError as e:
        raise UserError(f"{where}: cannot read ({e.strerror})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        byte = raw[e.start : e.start + 1]
        raise UserError(f"{where}: not UTF-8 text: byte {e.start} (line {line}) is {byte!r} ({e.reason})") from None


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve(remote: RemoteFile, timeout: float = 30.0) -> Path:
    """Local path of `remote`, downloading it into the cache if it is nowhere on disk."""
    looked = []
    data_dir = os.environ.get("DDLM_DATA_DIR")
    if data_dir:
        candidate = Path(data_dir) / remote.relpath
        if candidate.is_file():
            return candidate
        looked.append(str(candidate))
    else:
        looked.append("$DDLM_DATA_DIR (not set)")
    cached = cache_dir() / remote.relpath
    if cached.is_file():
        return cached
    looked.append(str(cached))
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(remote.url, timeout=timeout) as response:
            payload = response.read()
    except Exception as e:  # offline, DNS, HTTP error: all mean "not available", and say why
        raise UserError(
            f"--data {remote.name}: not found in {', '.join(looked)} and the download from {remote.url} failed "
            f"({e}). Set DDLM_DATA_DIR to a folder holding {remote.relpath}, or pass --data PATH to a local file."
        ) from None
    digest = hashlib.sha256(payload).hexdigest()
    if remote.sha256 and digest != remote.sha256:
        raise UserError(
            f"--data {remote.name}: the download from {remote.url} has SHA-256 {digest}, expected {remote.sha256}; "
            "not kept. Set DDLM_DATA_DIR to a folder with a verified copy."
        )
    fd, tmp = tempfile.mkstemp(dir=cached.parent, suffix=".part")
    with os.fdopen(fd, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, cached)
    return cached
