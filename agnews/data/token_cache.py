"""The token cache: each tokenized split as one checked `.pt` file, keyed by everything that changes its tensors."""

import json
from pathlib import Path

import torch
from filelock import FileLock
from lightning.pytorch.utilities import rank_zero_info

from agnews.atomic import atomic_file
from agnews.errors import AGNewsError
from agnews.hashing import sha256

# Bump when the layout of the cached tensors changes, so old files are never read as new ones.
CACHE_FORMAT = 3  # 3: the rows fingerprint (teacher files key on it)


class DamagedCache(Exception):
    pass


def _checksum(tensors: dict) -> str:
    return sha256(*(tensors[key].numpy().tobytes() for key in ("input_ids", "lengths", "labels")))


def read_cache(path: Path) -> dict:
    """A cached split, checked: it loads, its tensors fit together, and their checksum is the one recorded."""
    try:
        tensors = torch.load(path, weights_only=True)
    except Exception as err:  # truncated zip, garbage bytes, wrong pickle: all mean "not a usable cache"
        raise DamagedCache(f"does not load ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    if not isinstance(tensors, dict) or not {"input_ids", "lengths", "labels", "checksum"} <= set(tensors):
        raise DamagedCache("lacks the expected tensors")
    lengths = tensors["lengths"]
    if len(lengths) != len(tensors["labels"]) or int(lengths.long().sum()) != len(tensors["input_ids"]):
        raise DamagedCache("has tensors of inconsistent shapes")
    if _checksum(tensors) != tensors["checksum"]:
        raise DamagedCache("does not match its recorded checksum")
    return tensors


class TokenCache:
    """`<cache_dir>/<split>-<key>.pt`; the key hashes the data, the tokenizer's content, `max_length`, the number
    of classes (which names integer labels) and the format. Files are written whole (temp + rename) under a lock,
    and checked when read.

    Not `datasets.map(cache_file_name=...)`: that cache is found by loading the data set again in every process
    (for a hub id: asking the hub), and a damaged Arrow file fails the run instead of being rebuilt."""

    def __init__(self, cache_dir: str, max_length: int, num_classes: int = 4):
        self.root = Path(cache_dir).expanduser()
        self.max_length = max_length
        self.num_classes = num_classes

    def path(self, split: str, data_fingerprint: str, tokenizer_fingerprint: str) -> Path:
        key = json.dumps(
            {
                "format": CACHE_FORMAT,
                "data": data_fingerprint,
                "split": split,
                "tokenizer": tokenizer_fingerprint,
                "max_length": self.max_length,
                "num_classes": self.num_classes,
            },
            sort_keys=True,
        )
        return self.root / f"{split}-{sha256(key)[:20]}.pt"

    def lock(self, path: Path) -> FileLock:
        path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(path.with_name(f".{path.name}.lock"))

    @staticmethod
    def is_valid(path: Path, split: str) -> bool:
        """A usable file; a damaged one is reported, removed, and counts as missing."""
        if not path.is_file():
            return False
        try:
            read_cache(path)
            return True
        except DamagedCache as err:
            rank_zero_info(f"agnews: warning: the cached {split} split {path} {err}; rebuilding it")
            path.unlink(missing_ok=True)
            return False

    @staticmethod
    def load(path: Path, split: str) -> dict:
        """A split's tensors, for setup: a missing or damaged file is a clear error (prepare_data rebuilds it)."""
        if not path.is_file():
            raise AGNewsError(f"no tokenized cache for the {split} split at {path}; call prepare_data() first")
        try:
            return read_cache(path)
        except DamagedCache as err:
            raise AGNewsError(
                f"the cached {split} split {path} {err}; run again and prepare_data() rebuilds it"
            ) from None

    @staticmethod
    def write(path: Path, tensors: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            torch.save({**tensors, "checksum": _checksum(tensors)}, tmp)

    # A hub data set is known by `datasets`' fingerprint of each split: prepare_data notes them here, so that setup
    # finds the cache files without loading the data set (and asking the hub) again.
    def _hub_index(self, dataset: str) -> Path:
        return self.root / f"hub-{sha256(dataset)[:16]}.json"

    def noted_fingerprints(self, dataset: str) -> dict[str, str]:
        index = self._hub_index(dataset)
        return json.loads(index.read_text()) if index.is_file() else {}

    def note_fingerprints(self, dataset: str, fingerprints: dict[str, str]) -> None:
        index = self._hub_index(dataset)
        with self.lock(index):
            noted = self.noted_fingerprints(dataset)
            with atomic_file(index) as tmp:
                tmp.write_text(json.dumps(noted | fingerprints))
