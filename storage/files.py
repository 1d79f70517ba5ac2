"""Content-addressed asset files under the data dir.

A file is written to a temp name, fsynced and renamed into ``assets/ab/abcdef…``; only
then may a DB row point at it. ``sweep`` removes temp leftovers and files no row names.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Iterable

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class AssetFileStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / ".tmp"
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError("invalid content address")
        return self.root / sha256[:2] / sha256

    def put_file(self, src: Path) -> tuple[str, int]:
        """Copy ``src`` into the store atomically; returns (sha256, size)."""
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp, prefix="in-")
        tmp = Path(tmp_name)
        h = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
                while chunk := inp.read(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            digest = h.hexdigest()
            dest = self.path_for(digest)
            dest.parent.mkdir(exist_ok=True)
            if dest.exists():
                tmp.unlink()
            else:
                os.replace(tmp, dest)
                _fsync_dir(dest.parent)
            return digest, size
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp, prefix="raw-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return self.put_file(Path(tmp_name))
        finally:
            Path(tmp_name).unlink(missing_ok=True)

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).exists()

    def remove(self, sha256: str) -> None:
        self.path_for(sha256).unlink(missing_ok=True)

    def sweep(self, referenced: Iterable[str], min_age_s: float = 3600.0) -> int:
        """Delete temp files and content files no DB row references. Returns the count.

        Files younger than ``min_age_s`` are kept: another process may be between its
        rename and its DB commit (or mid-write in .tmp).
        """
        keep = set(referenced)
        cutoff = time.time() - min_age_s
        removed = 0
        for sub in self.root.iterdir():
            if not sub.is_dir():
                continue
            for f in sub.iterdir():
                if (sub == self.tmp or f.name not in keep) and f.stat().st_mtime <= cutoff:
                    f.unlink(missing_ok=True)
                    removed += 1
        return removed


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a small file (previews, exports) so readers never see a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".w-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
