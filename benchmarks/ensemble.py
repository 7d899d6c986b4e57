"""Does a TF-IDF linear model add to the fine-tuned encoder? Mixes their class probabilities, with the weight
chosen on the validation split only, and reports validation and test accuracy of each and of the mix.

    pip install -e ".[bench]"
    python benchmarks/ensemble.py --ckpt_path CKPT [--data ../shared/data/ag_news] [--precision bf16]

The validation rows are the ones `fit` held out (same `val_size` and seed, read from the checkpoint), and the
TF-IDF model is fitted on the same training rows as the encoder.
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agnews.checkpoints import read_checkpoint  # noqa: E402
from agnews.data import load_raw, stratified_take  # noqa: E402
from agnews.inference import Classifier  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ag_news"))
    parser.add_argument("--precision", default="bf16")
    args = parser.parse_args()

    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    settings = read_checkpoint(args.ckpt_path)["datamodule_hyper_parameters"]
    raw, _ = load_raw(args.data)
    train_texts, train_labels = list(raw["train"]["text"]), np.asarray(raw["train"]["label"])
    generator = torch.Generator().manual_seed(settings["seed"])
    val_rows, train_rows = stratified_take(train_labels, settings["val_size"], generator, "val_size")
    splits = {
        "val": ([train_texts[i] for i in val_rows], train_labels[val_rows]),
        "test": (list(raw["test"]["text"]), np.asarray(raw["test"]["label"])),
    }

    start = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    features = vectorizer.fit_transform([train_texts[i] for i in train_rows])
    linear = LogisticRegression(C=20, max_iter=2000).fit(features, train_labels[train_rows])
    tfidf_seconds = time.perf_counter() - start

    encoder = Classifier.from_checkpoint(args.ckpt_path, precision=args.precision)
    probs = {}
    for name, (texts, _) in splits.items():
        probs[name] = (encoder.predict_proba(texts).numpy(), linear.predict_proba(vectorizer.transform(texts)))

    def accuracy(name, weight):
        enc, lin = probs[name]
        return float(((1 - weight) * enc + weight * lin).argmax(1).__eq__(splits[name][1]).mean() * 100)

    weights = np.round(np.arange(0, 1.0001, 0.05), 2)
    best = max(weights, key=lambda w: (accuracy("val", w), -w))  # ties: less TF-IDF
    print(f"checkpoint {args.ckpt_path}; TF-IDF + logistic regression fitted in {tfidf_seconds:.1f} s on {len(train_rows):,} rows")
    print("| model | val acc | test acc |\n|---|---:|---:|")
    for label, w in (("encoder", 0.0), ("TF-IDF + logistic regression", 1.0), (f"mix, TF-IDF weight {best} (chosen on val)", best)):
        print(f"| {label} | {accuracy('val', w):.2f}% | {accuracy('test', w):.2f}% |")


if __name__ == "__main__":
    main()
