"""Make a teacher file for distillation, in one of two ways:

- `python -m agnews.distill teacher --ckpt_path CKPT`: one checkpoint (any agnews checkpoint: the MPNet recipe's,
  say) scores every row of its data's training pool, validation rows included, since a student may carve its
  validation rows differently. A teacher trained on those rows is right on nearly all of them, so its logits
  carry little beyond the labels.
- `python -m agnews.distill teacher --config CONFIG --folds K`: K teachers, each fitted with CONFIG on all but
  one K-th of the pool (stratified, seeded), score the K-th they never saw: every row's logits come from a
  teacher that did not train on it (out-of-fold), as a teacher scores new text.

The test split is never read. A student then learns from the file with `fit --data.teacher FILE`.
"""

import argparse
import gc
import json
import shlex
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import yaml

from agnews.atomic import atomic_file, atomic_folder
from agnews.errors import AGNewsError
from agnews.hashing import sha256

DEFAULT_OUTPUT = "teacher.parquet"
DEFAULT_FOLDS = 5


def _say(message: str) -> None:
    print(f"agnews: {message}", file=sys.stderr, flush=True)


def _training_pool(dataset: str, num_classes: int):
    """The data's `train` split (the pool a teacher scores), its texts and labels, and the class names."""
    from agnews.data.datamodule import load_raw

    raw, class_names = load_raw(dataset, num_classes)
    if "train" not in raw:
        raise AGNewsError(f"dataset {dataset!r} has no 'train' split to score")
    pool = raw["train"]
    texts, labels = list(pool["text"]), list(pool["label"])
    empty = [i for i, t in enumerate(texts) if t is None or not str(t).strip()]
    if empty:
        raise AGNewsError(f"the train split of {dataset!r} has empty texts (row {empty[0]}); drop or fill them first")
    return pool, texts, labels, class_names


def make_teacher(
    ckpt_path: str,
    output: str | Path = DEFAULT_OUTPUT,
    dataset: str | None = None,
    precision: str = "auto",
    batch_size: int | None = None,
    command: str | None = None,
) -> Path:
    import torch

    from agnews.checkpoints import LOG_ROOT, find_checkpoint, read_checkpoint
    from agnews.data.teacher import rows_fingerprint, write_teacher
    from agnews.inference import Classifier

    path = find_checkpoint(LOG_ROOT, ckpt_path)
    saved = read_checkpoint(path)
    data = saved.get("datamodule_hyper_parameters", {})
    dataset = dataset or data.get("dataset")
    if not dataset:
        raise AGNewsError(f"checkpoint {path} names no dataset; pass --dataset FOLDER_OR_HUB_ID")
    _, texts, labels, class_names = _training_pool(dataset, saved.get("hyper_parameters", {}).get("num_classes", 4))
    classifier = Classifier.from_checkpoint(path, precision=precision, batch_size=batch_size)
    if len(classifier.class_names) != len(class_names):
        raise AGNewsError(
            f"checkpoint {path} predicts {len(classifier.class_names)} classes, {dataset!r} has {len(class_names)}"
        )
    _say(f"scoring {len(texts):,} training rows of {dataset} with {path}")
    start = time.perf_counter()
    logits = classifier.logits(texts)
    seconds = time.perf_counter() - start
    labels_t = torch.tensor(labels, dtype=torch.int64)
    hp = saved.get("hyper_parameters", {})
    meta = {
        "rows": rows_fingerprint(texts, labels),
        "teacher": sha256(Path(path)),
        "checkpoint": Path(path).name,
        "backbone": hp.get("backbone"),
        "dataset": str(dataset),
        "class_names": list(class_names),
        "precision": classifier.precision,
        "train_acc": float((logits.argmax(-1) == labels_t).float().mean()),
        "command": command,
    }
    out = write_teacher(output, logits, labels_t, meta)
    _say(
        f"teacher file {out}: {len(texts):,} rows x {logits.shape[1]} logits in {seconds:.0f} s "
        f"(the teacher's accuracy on these rows {meta['train_acc']:.2%})"
    )
    return out


def fold_of_rows(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each row's fold, 0..folds-1: each class's rows, shuffled with the seed, dealt round the folds in turn, so
    every fold holds every class in proportion (scikit-learn's StratifiedKFold; not a dependency of agnews)."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    dealt = 0
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        fold[rows] = (dealt + np.arange(len(rows))) % folds
        dealt += len(rows)
    return fold


def make_fold_teacher(
    config: str | Path,
    folds: int = DEFAULT_FOLDS,
    output: str | Path = DEFAULT_OUTPUT,
    dataset: str | None = None,
    workdir: str | Path | None = None,
    seed: int = 42,
    precision: str = "auto",
    batch_size: int | None = None,
    fit_flags: tuple[str, ...] = (),
    command: str | None = None,
) -> Path:
    """Out-of-fold teachers. Each fold's fit and scores stay in `workdir`, so a run stopped midway (Ctrl-C, a
    crash) goes on from where it was: finished folds are kept, an interrupted fit resumes from its last
    checkpoint."""
    import torch

    from agnews.checkpoints import LOG_ROOT, find_checkpoint, read_checkpoint
    from agnews.data.teacher import rows_fingerprint, write_teacher
    from agnews.inference import Classifier
    from agnews.train import cli_main

    if folds < 2:
        raise AGNewsError(f"--folds {folds}: out-of-fold teachers need 2 folds or more (5 is usual)")
    config = Path(config)
    if not config.is_file():
        raise AGNewsError(f"config {config} does not exist; pass a file such as configs/recipe.yaml")
    settings = yaml.safe_load(config.read_text()) or {}
    dataset = dataset or (settings.get("data") or {}).get("dataset")
    if not dataset or dataset == "auto":
        raise AGNewsError(f"{config} names no dataset; pass --dataset FOLDER_OR_HUB_ID")
    num_classes = (settings.get("model") or {}).get("num_classes", 4)
    pool, texts, labels, class_names = _training_pool(dataset, num_classes)
    fold = fold_of_rows(np.asarray(labels), folds, seed)
    if np.bincount(fold, minlength=folds).min() == 0:
        raise AGNewsError(f"--folds {folds} is more than the {len(texts)} rows of {dataset!r} allow; use fewer folds")
    rows = rows_fingerprint(texts, labels)
    workdir = Path(workdir) if workdir else LOG_ROOT / f"folds-{Path(output).stem}"
    logits = torch.empty(len(texts), len(class_names))
    parts = []
    for k in range(folds):
        held = np.flatnonzero(fold == k)
        here = workdir / f"fold-{k + 1}-of-{folds}"
        key = {"rows": rows, "folds": folds, "seed": seed, "fold": k, "config": sha256(config), "fit": list(fit_flags)}
        stamp = here / "fold.json"
        if here.exists() and (not stamp.is_file() or json.loads(stamp.read_text()) != key):
            _say(f"{here} was made for other rows, folds or settings: starting that fold again")
            shutil.rmtree(here)
        if not here.exists():
            with atomic_folder(here) as tmp:
                (tmp / "data").mkdir()
                pool.select(np.flatnonzero(fold != k)).to_parquet(str(tmp / "data" / "train.parquet"))
                # a fit wants a test split (it fails early without one): the held-out fold, which chooses nothing
                pool.select(held).to_parquet(str(tmp / "data" / "test.parquet"))
                (tmp / "fold.json").write_text(json.dumps(key))
        scores = here / "scores.pt"
        if not scores.is_file():
            resume = any((here / LOG_ROOT).glob("version_*/checkpoints/last.ckpt"))
            _say(
                f"fold {k + 1} of {folds}: {'resuming the fit' if resume else 'fitting'} on {len(texts) - len(held):,} "
                f"rows, then scoring the {len(held):,} it never saw"
            )
            # each fold's fit gets its own argv; LightningCLI would warn that the process has argv of its own
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
                cli = cli_main(
                    [
                        "fit",
                        "--config",
                        str(config),
                        *fit_flags,
                        "--data.dataset",
                        str(here / "data"),
                        "--trainer.default_root_dir",
                        str(here),
                        *(["--ckpt_path", "last"] if resume else []),
                    ]
                )
            del cli
            gc.collect()
            checkpoint = find_checkpoint(here / LOG_ROOT, "best")
            classifier = Classifier.from_checkpoint(checkpoint, precision=precision, batch_size=batch_size)
            part = {
                "logits": classifier.logits([texts[i] for i in held]),
                "checkpoint": sha256(checkpoint),
                "backbone": read_checkpoint(checkpoint).get("hyper_parameters", {}).get("backbone"),
                "precision": classifier.precision,
            }
            del classifier
            with atomic_file(scores) as tmp:
                torch.save(part, tmp)
        part = torch.load(scores, weights_only=True)
        logits[torch.from_numpy(held)] = part["logits"]
        parts.append(part)
        right = float((part["logits"].argmax(-1) == torch.tensor([labels[i] for i in held])).float().mean())
        _say(f"fold {k + 1} of {folds}: {right:.2%} right on the {len(held):,} rows its teacher never saw")
    labels_t = torch.tensor(labels, dtype=torch.int64)
    meta = {
        "rows": rows,
        "teacher": sha256(*(p["checkpoint"] for p in parts)),
        "checkpoint": f"{folds} out-of-fold checkpoints under {workdir}",
        "fold_checkpoints": [p["checkpoint"] for p in parts],
        "folds": folds,
        "fold_seed": seed,
        "backbone": parts[0]["backbone"],
        "dataset": str(dataset),
        "class_names": list(class_names),
        "precision": parts[0]["precision"],
        "train_acc": float((logits.argmax(-1) == labels_t).float().mean()),
        "command": command,
    }
    out = write_teacher(output, logits, labels_t, meta)
    _say(
        f"teacher file {out}: {len(texts):,} rows x {logits.shape[1]} out-of-fold logits ({meta['train_acc']:.2%} right)"
    )
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m agnews.distill", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser(
        "teacher",
        help="score every training-pool row with a checkpoint, or with out-of-fold teachers, into a teacher file",
        epilog="With --config, flags after `--` go to every fold's fit, e.g. -- --trainer.max_epochs 2",
    )
    who = t.add_mutually_exclusive_group(required=True)
    who.add_argument("--ckpt_path", help="the teacher: a .ckpt file, or best/last of the latest run")
    who.add_argument("--config", help="fit one teacher per fold with this config (e.g. configs/recipe.yaml)")
    t.add_argument(
        "--folds", type=int, default=DEFAULT_FOLDS, help=f"with --config: how many (default {DEFAULT_FOLDS})"
    )
    t.add_argument("--fold_seed", type=int, default=42, help="with --config: the seed that deals rows to folds")
    t.add_argument(
        "--workdir", default=None, help="with --config: where the folds' fits go (default lightning_logs/folds-NAME)"
    )
    t.add_argument("--output", default=DEFAULT_OUTPUT, help=f"the teacher file to write (default {DEFAULT_OUTPUT})")
    t.add_argument("--dataset", default=None, help="the data to score (default: the checkpoint's own)")
    t.add_argument("--precision", default="auto", help="auto, 32 or bf16 (auto: bf16 where the CPU runs it natively)")
    t.add_argument("--batch_size", type=int, default=None, help="rows per forward pass (default: the fastest measured)")
    return p


def main(argv: list[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    fit_flags = tuple(words[words.index("--") + 1 :]) if "--" in words else ()
    p = parser()
    args = p.parse_args(words[: words.index("--")] if "--" in words else words)
    command = "python -m agnews.distill " + shlex.join(words)
    if args.ckpt_path and (fit_flags or args.workdir):
        p.error("`--` fit flags and --workdir go with --config (out-of-fold teachers), not --ckpt_path")
    try:
        if args.ckpt_path:
            make_teacher(args.ckpt_path, args.output, args.dataset, args.precision, args.batch_size, command=command)
        else:
            make_fold_teacher(
                args.config,
                args.folds,
                args.output,
                args.dataset,
                args.workdir,
                args.fold_seed,
                args.precision,
                args.batch_size,
                fit_flags,
                command=command,
            )
    except AGNewsError as err:
        print(f"agnews: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
