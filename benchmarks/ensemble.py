"""Do a TF-IDF linear model, or a second fine-tuned encoder, add to the fine-tuned encoder? Averages the encoders'
class probabilities (equal weights), mixes in TF-IDF + logistic regression with the weight chosen on the
validation split only, and reports validation and test accuracy of each part and of the mix.

    pip install -e ".[bench]"
    python benchmarks/ensemble.py --ckpt_path CKPT [CKPT ...] [--data ../shared/data/ag_news] [--precision bf16]

The validation rows are the ones `fit` held out (same `val_size` and seed, read from the checkpoints, which
must agree: an encoder must not have trained on another's validation rows), and the TF-IDF model is fitted on
the same training rows as the encoders.
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agnews.checkpoints import read_checkpoint  # noqa: E402
from agnews.data.loading import load_raw  # noqa: E402
from agnews.data.splits import stratified_split  # noqa: E402
from agnews.inference import Classifier  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", required=True, nargs="+")
    parser.add_argument("--data", default=str(ROOT / "data" / "ag_news"))
    parser.add_argument("--precision", default="bf16")
    args = parser.parse_args()

    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    every = [read_checkpoint(path)["datamodule_hyper_parameters"] for path in args.ckpt_path]
    settings = every[0]
    if any((s["seed"], s["val_size"]) != (settings["seed"], settings["val_size"]) for s in every):
        sys.exit("ensemble.py: the checkpoints hold out different validation rows (data.seed / data.val_size differ)")
    raw, _ = load_raw(args.data)
    train_texts, train_labels = list(raw["train"]["text"]), np.asarray(raw["train"]["label"])
    val_rows, train_rows = stratified_split(train_labels, settings["val_size"], settings["seed"], "val_size")
    splits = {
        "val": ([train_texts[i] for i in val_rows], train_labels[val_rows]),
        "test": (list(raw["test"]["text"]), np.asarray(raw["test"]["label"])),
    }

    start = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    features = vectorizer.fit_transform([train_texts[i] for i in train_rows])
    linear = LogisticRegression(C=20, max_iter=2000).fit(features, train_labels[train_rows])
    tfidf_seconds = time.perf_counter() - start

    encoders = {name: [] for name in splits}
    for path in args.ckpt_path:
        encoder = Classifier.from_checkpoint(path, precision=args.precision)
        for name, (texts, _) in splits.items():
            encoders[name].append(encoder.predict_proba(texts).numpy())
    probs = {
        name: (np.mean(encoders[name], 0), linear.predict_proba(vectorizer.transform(texts)))
        for name, (texts, _) in splits.items()
    }

    def correct(name, probabilities):
        return float((probabilities.argmax(1) == splits[name][1]).mean() * 100)

    def accuracy(name, weight):
        enc, lin = probs[name]
        return correct(name, (1 - weight) * enc + weight * lin)

    weights = np.round(np.arange(0, 1.0001, 0.05), 2)
    best = max(weights, key=lambda w: (accuracy("val", w), -w))  # ties: less TF-IDF
    print(f"TF-IDF + logistic regression fitted in {tfidf_seconds:.1f} s on {len(train_rows):,} rows")
    print("| model | val acc | test acc |\n|---|---:|---:|")
    for i, path in enumerate(args.ckpt_path):
        print(
            f"| encoder {i + 1}: `{path}` | {correct('val', encoders['val'][i]):.2f}% | {correct('test', encoders['test'][i]):.2f}% |"
        )
    rows = [("TF-IDF + logistic regression", 1.0), (f"mix, TF-IDF weight {best} (chosen on val)", best)]
    if len(args.ckpt_path) > 1:
        rows.insert(0, ("encoders averaged", 0.0))
    for label, w in rows:
        print(f"| {label} | {accuracy('val', w):.2f}% | {accuracy('test', w):.2f}% |")


if __name__ == "__main__":
    main()
