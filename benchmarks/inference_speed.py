"""Inference speed and accuracy of a trained checkpoint on the full official test split, one run, every variant:
agnews' Classifier in fp32, bf16 autocast and dynamic int8, against the Hugging Face pipeline on the exported model.

    python benchmarks/inference_speed.py [--ckpt_path best] [--data ../shared/data/ag_news] [--rounds 2]

Variants run interleaved, `--rounds` times each, best round kept (this machine is noisy). Prints samples/s,
accuracy, agreement with fp32 and ratios; accuracy is the same in every round (inference is deterministic).
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agnews.data.loading import load_raw  # noqa: E402
from agnews.export import export  # noqa: E402
from agnews.inference import Classifier  # noqa: E402
from agnews.precision import cpu_bf16  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ckpt_path", default="best", help="a .ckpt file or best/last of the latest run (default: best)"
    )
    parser.add_argument("--data", default=str(ROOT / "data" / "ag_news"))
    parser.add_argument("--rows", type=int, default=None, help="first N test rows only (quick check)")
    parser.add_argument(
        "--batch_size", type=int, default=None, help="rows per batch (default: the Classifier's own, by precision)"
    )
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    raw, names = load_raw(args.data)
    test = raw["test"] if args.rows is None else raw["test"].select(range(args.rows))
    texts, labels = list(test["text"]), torch.tensor(list(test["label"]))
    print(f"{len(texts):,} test rows, {torch.get_num_threads()} threads")

    precisions = ["32", "bf16", "int8"] if cpu_bf16()[0] else ["32", "int8"]
    classifiers = {
        p: Classifier.from_checkpoint(args.ckpt_path, precision=p, batch_size=args.batch_size) for p in precisions
    }
    print(f"checkpoint: {classifiers['32'].checkpoint}, max_length {classifiers['32'].max_length}")
    print("rows per batch: " + ", ".join(f"{c.batch_size} ({p})" for p, c in classifiers.items()))

    from transformers import pipeline

    exported = export(args.ckpt_path, Path(tempfile.mkdtemp()) / "model")
    pipe = pipeline("text-classification", model=str(exported), device="cpu")
    label_id = {n: i for i, n in enumerate(names)}

    def run_pipeline(batch):
        out = pipe(batch, batch_size=classifiers["32"].batch_size, truncation=True)
        return torch.tensor([label_id[o["label"]] for o in out])

    runners = {f"agnews {p}": (lambda batch, c=c: c.predict_proba(batch).argmax(-1)) for p, c in classifiers.items()}
    runners["HF pipeline fp32 (exported)"] = run_pipeline

    for run in runners.values():  # warm-up: first calls allocate and pick kernels
        run(texts[:256])
    best: dict[str, float] = {}
    preds: dict[str, torch.Tensor] = {}
    for _ in range(args.rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            preds[name] = run(texts)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)

    base = preds["agnews 32"]
    peer = "HF pipeline fp32 (exported)"
    print("\n| variant | samples/s | vs fp32 | vs pipeline | accuracy | agrees with fp32 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in runners:
        speed = len(texts) / best[name]
        acc = (preds[name] == labels).float().mean().item() * 100
        agree = (preds[name] == base).float().mean().item() * 100
        print(
            f"| {name} | {speed:.1f} | {best['agnews 32'] / best[name]:.2f}x | {best[peer] / best[name]:.2f}x | {acc:.2f}% | {agree:.2f}% |"
        )


if __name__ == "__main__":
    main()
