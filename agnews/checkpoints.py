"""Checkpoints: finding a run's (`best`, `last`, or a file), reading them safely, writing them safely."""

import re
import zipfile
from pathlib import Path

import torch

from agnews.errors import AGNewsError

LOG_ROOT = Path("lightning_logs")


def runs(log_root: Path) -> list[Path]:
    """Run folders (`version_N`), newest first."""
    found = [p for p in Path(log_root).glob("version_*") if p.is_dir() and re.fullmatch(r"version_\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]), reverse=True)


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint's contents, tensors memory-mapped; a damaged or truncated file is a clear error."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise AGNewsError(
            f"checkpoint {path} is damaged or truncated ({reason}); pass another one, e.g. --ckpt_path last or an earlier run's file"
        ) from None


def _best_in(folder: Path) -> Path | None:
    candidates = [p for p in folder.glob("*.ckpt") if not p.name.startswith("last")]
    last = folder / "last.ckpt"
    if len(candidates) > 1 and last.is_file():
        # several kept (save_top_k > 1): ModelCheckpoint's own state says which is best
        for key, value in read_checkpoint(last).get("callbacks", {}).items():
            if key.startswith(("ModelCheckpoint", "SafeCheckpoint")) and value.get("best_model_path"):
                best = folder / Path(value["best_model_path"]).name
                if best.is_file():
                    return best
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def find_checkpoint(log_root: Path, which: str) -> Path:
    """`which` is a file, or `best`/`last` of the most recent run under `log_root` that saved checkpoints."""
    if which not in ("best", "last"):
        path = Path(which).expanduser()
        if not path.is_file():
            raise AGNewsError(
                f"checkpoint {which!r} does not exist; pass an existing .ckpt file, or 'best'/'last' of the latest run"
            )
        return path
    for run in runs(log_root):
        folder = run / "checkpoints"
        path = (folder / "last.ckpt") if which == "last" else _best_in(folder)
        if path is not None and path.is_file():
            return path
    raise AGNewsError(
        f"no {which} checkpoint under {log_root}/; run `python -m agnews.train fit` first or pass --ckpt_path FILE"
    )
