"""Export a checkpoint to the standard Hugging Face format: `python -m agnews.export [--ckpt_path best] OUT_DIR`.

The folder holds the fine-tuned model and its tokenizer, written with `save_pretrained`, with the class names
as `id2label`, so that `transformers.pipeline("text-classification", model=OUT_DIR)` works without agnews.
A mean-pooled model (the recipes') is a custom model: its code travels in the folder (`pooling.py`, named
in config.json's `auto_map`), and loading it takes `trust_remote_code=True`; without it transformers refuses
the folder instead of running it as a first-token model.
"""

import argparse
import sys
from pathlib import Path

from agnews.atomic import atomic_folder
from agnews.checkpoints import LOG_ROOT
from agnews.errors import AGNewsError


def export(ckpt_path: str, out_dir: str | Path, log_root: str | Path = LOG_ROOT, overwrite: bool = False) -> Path:
    from agnews.inference import Classifier

    out = Path(out_dir).expanduser()
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
        raise AGNewsError(f"{out} exists and is not an empty folder; pass --overwrite to replace it, or another folder")
    if not out.parent.is_dir():
        raise AGNewsError(f"folder {out.parent} does not exist; create it first")
    classifier = Classifier.from_checkpoint(ckpt_path, log_root=log_root)
    print(f"agnews: export uses checkpoint {classifier.checkpoint}", file=sys.stderr, flush=True)
    module, tokenizer = classifier.model, classifier.tokenizer
    model = module.model
    model.config.id2label = dict(enumerate(classifier.class_names))
    model.config.label2id = {name: i for i, name in enumerate(classifier.class_names)}
    # the pipeline truncates where training did, when called with truncation=True
    tokenizer.model_max_length = classifier.max_length
    # written beside the target and renamed into place: a failed export never leaves a half folder behind
    with atomic_folder(out, replace=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agnews.export", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="the folder to write (must not exist, or be empty, unless --overwrite)")
    parser.add_argument(
        "--ckpt_path", default="best", help="a .ckpt file, or best/last of the latest run (default: best)"
    )
    parser.add_argument("--log_root", default=str(LOG_ROOT), help="where runs are looked up for best/last")
    parser.add_argument("--overwrite", action="store_true", help="replace out_dir if it exists")
    args = parser.parse_args(argv)
    try:
        out = export(args.ckpt_path, args.out_dir, args.log_root, args.overwrite)
    except AGNewsError as err:
        print(f"agnews: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    remote = ", trust_remote_code=True" if (out / "pooling.py").is_file() else ""
    print(
        f"agnews: exported to {out}; use it with transformers.pipeline('text-classification', model={str(out)!r}{remote})"
    )


if __name__ == "__main__":
    main()
