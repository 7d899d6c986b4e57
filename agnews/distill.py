"""Make a teacher file for distillation: `python -m agnews.distill teacher --ckpt_path CKPT [--output FILE]`.

The checkpoint (any agnews checkpoint: the MPNet recipe's, say) scores every row of its data's training pool,
validation rows included, since a student may carve its validation rows differently; the rows were never used
to choose the teacher's checkpoint beyond what the teacher's own run did with them (the MPNet recipe keeps its
final epoch). The test split is never read. A student then learns from it with `fit --data.teacher FILE`.
"""

import argparse
import shlex
import sys
import time
from pathlib import Path

from agnews.errors import AGNewsError
from agnews.hashing import sha256

DEFAULT_OUTPUT = "teacher.parquet"


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
    from agnews.data.datamodule import load_raw
    from agnews.data.teacher import rows_fingerprint, write_teacher
    from agnews.inference import Classifier

    path = find_checkpoint(LOG_ROOT, ckpt_path)
    saved = read_checkpoint(path)
    data = saved.get("datamodule_hyper_parameters", {})
    dataset = dataset or data.get("dataset")
    if not dataset:
        raise AGNewsError(f"checkpoint {path} names no dataset; pass --dataset FOLDER_OR_HUB_ID")
    raw, class_names = load_raw(dataset, saved.get("hyper_parameters", {}).get("num_classes", 4))
    if "train" not in raw:
        raise AGNewsError(f"dataset {dataset!r} has no 'train' split to score")
    pool = raw["train"]
    texts, labels = list(pool["text"]), list(pool["label"])
    empty = [i for i, t in enumerate(texts) if t is None or not str(t).strip()]
    if empty:
        raise AGNewsError(f"the train split of {dataset!r} has empty texts (row {empty[0]}); drop or fill them first")
    classifier = Classifier.from_checkpoint(path, precision=precision, batch_size=batch_size)
    if len(classifier.class_names) != len(class_names):
        raise AGNewsError(
            f"checkpoint {path} predicts {len(classifier.class_names)} classes, {dataset!r} has {len(class_names)}"
        )
    print(f"agnews: scoring {len(texts):,} training rows of {dataset} with {path}", file=sys.stderr, flush=True)
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
    print(
        f"agnews: teacher file {out}: {len(texts):,} rows x {logits.shape[1]} logits in {seconds:.0f} s "
        f"(the teacher's accuracy on these rows {meta['train_acc']:.2%})",
        file=sys.stderr,
        flush=True,
    )
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m agnews.distill", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("teacher", help="score every training-pool row with a checkpoint, into a teacher file")
    t.add_argument("--ckpt_path", required=True, help="the teacher: a .ckpt file, or best/last of the latest run")
    t.add_argument("--output", default=DEFAULT_OUTPUT, help=f"the teacher file to write (default {DEFAULT_OUTPUT})")
    t.add_argument("--dataset", default=None, help="the data to score (default: the checkpoint's own)")
    t.add_argument("--precision", default="auto", help="auto, 32 or bf16 (auto: bf16 where the CPU runs it natively)")
    t.add_argument("--batch_size", type=int, default=None, help="rows per forward pass (default: the fastest measured)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    words = sys.argv[1:] if argv is None else argv
    try:
        make_teacher(
            args.ckpt_path,
            args.output,
            args.dataset,
            args.precision,
            args.batch_size,
            command="python -m agnews.distill " + shlex.join(words),
        )
    except AGNewsError as err:
        print(f"agnews: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
