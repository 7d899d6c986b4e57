"""Learning curve: test accuracy against training rows, fine-tuned MiniLM vs a TF-IDF + linear baseline.

    pip install -e ".[bench]"
    python benchmarks/learning_curve.py                       # 500, 1,000, 2,500, 5,000 and all 9,783 rows
    python benchmarks/learning_curve.py --sizes 200 400 --epochs 1    # a quick check

Each size is a stratified subset (agnews's `--data.train_size`) of the train pool left after the 1,087-row
stratified validation split; the encoder runs `configs/offline.yaml` through the real CLI (`fit`, best
checkpoint by val_loss, then `test`) on the full official 7,600-row test split. The baseline (scikit-learn:
word 1-2-gram TF-IDF, sublinear tf, then a linear SVM) trains on exactly the same rows.
"""

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def encoder_run(size: int | None, args, root: str) -> dict:
    from agnews.train import cli_main

    common = [
        "--data.dataset",
        args.data,
        "--trainer.default_root_dir",
        root,
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
    ]
    start = time.perf_counter()
    fit = cli_main(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / "offline.yaml"),
            *common,
            "--trainer.max_epochs",
            str(args.epochs),
            "--model.learning_rate",
            str(args.lr),
            *(["--data.train_size", str(size)] if size else []),
        ]
    )
    minutes = (time.perf_counter() - start) / 60
    rows = len(fit.datamodule.train_set)
    test = cli_main(["test", *common])
    return {
        "rows": rows,
        "encoder_acc": float(test.trainer.callback_metrics["test_acc"]),
        "encoder_minutes": minutes,
        "train_rows_index": fit.datamodule.train_set.rows.numpy(),
    }


def baseline_run(row_index: np.ndarray, raw) -> float:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    train = raw["train"].select(row_index)
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1), LinearSVC(C=0.5))
    model.fit(list(train["text"]), np.asarray(train["label"]))
    return float((model.predict(list(raw["test"]["text"])) == np.asarray(raw["test"]["label"])).mean())


def plot(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r["rows"] for r in results]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(rows, [100 * r["encoder_acc"] for r in results], "o-", label="MiniLM-L6 fine-tuned (agnews)")
    ax.plot(rows, [100 * r["baseline_acc"] for r in results], "s--", label="TF-IDF + linear SVM")
    ax.set_xscale("log")
    ax.set_xticks(rows, [f"{r:,}" for r in rows])
    ax.set_xlabel("training rows (log scale)")
    ax.set_ylabel("test accuracy (%), official 7,600 rows")
    ax.set_title("AG News learning curve on a 2-core CPU")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> None:
    import datasets

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT / "data" / "ag_news"))
    parser.add_argument("--sizes", nargs="*", type=int, default=[500, 1000, 2500, 5000, 0], help="0: all rows")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs")
    args = parser.parse_args()

    raw = datasets.load_dataset(args.data)
    results = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as root:
            result = encoder_run(size or None, args, root)
        result["baseline_acc"] = baseline_run(result.pop("train_rows_index"), raw)
        results.append(result)
        print(
            f"{result['rows']:>6,} rows: encoder {100 * result['encoder_acc']:.2f}%, "
            f"TF-IDF {100 * result['baseline_acc']:.2f}%, {result['encoder_minutes']:.1f} min",
            file=sys.stderr,
            flush=True,
        )

    args.out_dir.mkdir(parents=True, exist_ok=True)
    with open(args.out_dir / "learning_curve.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(results[0]))
        writer.writeheader()
        writer.writerows(results)
    plot(results, args.out_dir / "learning_curve.png")
    print(f"\n{args.epochs} epochs, learning rate {args.lr}, configs/offline.yaml; test: {len(raw['test']):,} rows\n")
    print(
        "| training rows | MiniLM-L6 fine-tuned | TF-IDF + linear SVM | fine-tuning minutes (fit, incl. validation) |"
    )
    print("|---|---|---|---|")
    for r in results:
        print(
            f"| {r['rows']:,} | {100 * r['encoder_acc']:.2f}% | {100 * r['baseline_acc']:.2f}% | {r['encoder_minutes']:.1f} |"
        )


if __name__ == "__main__":
    main()
