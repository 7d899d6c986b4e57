"""Write to a temporary name beside the target, then rename: a reader (or a crash) sees the old state or the
whole new one, never half of it."""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path to write; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Yields a temporary folder to fill; on success it becomes `path`. Where `path` exists, it is replaced
    (`replace=True`) or kept, the new folder dropped (another process wrote the same content first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        yield tmp
        if path.exists() and replace:
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        elif not path.exists():
            try:
                tmp.rename(path)
            except OSError:  # another process renamed its copy into place first
                if not path.exists():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
