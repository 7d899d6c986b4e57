"""The one SHA-256 helper: cache keys and checksums, file and folder contents, rows, tokenizers."""

import hashlib
from pathlib import Path


def sha256(*parts: bytes | str | Path) -> str:
    """The hex SHA-256 of `parts` one after the other: bytes as they are, text as UTF-8, a `Path` as its file's
    bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            with part.open("rb") as file:
                for block in iter(lambda: file.read(1 << 20), b""):
                    digest.update(block)
        else:
            digest.update(part.encode() if isinstance(part, str) else part)
    return digest.hexdigest()
