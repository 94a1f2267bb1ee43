"""Test directories: their content hash."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def hash_test_dir(root: Path) -> str:
    """sha256 over the sorted relative paths and each file's digest (links by
    their target), so any change of content or layout changes it."""
    outer = hashlib.sha256()
    for path in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()):
        relative = path.relative_to(root).as_posix()
        if path.is_symlink():
            digest = "link:" + str(path.readlink())
        elif path.is_file():
            inner = hashlib.sha256()
            with open(path, "rb") as handle:
                while chunk := handle.read(CHUNK):
                    inner.update(chunk)
            digest = inner.hexdigest()
        else:
            continue
        outer.update(f"{relative}\0{digest}\n".encode())
    return outer.hexdigest()
