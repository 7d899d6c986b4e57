"""Where a training step's time goes, and what each speed option buys (run by hand).

    python benchmarks/profile_step.py --steps 30                 # samples/s of each variant
    python benchmarks/profile_step.py --profile bf16             # torch.profiler table of one variant, and its
                                                                 # matrix products' share of the matmul peak
    python benchmarks/profile_step.py --eval --rounds 2          # evaluation: precision x attention x batch
    python benchmarks/profile_step.py --losses --variants agnews agnews+autocast agnews+bf16-true
                                                                 # ... and how each variant trains

Batches come from agnews's own DataModule (length-grouped, real AG News rows, MiniLM tokenizer), and each
step is what Lightning runs: autocast forward, backward, optimizer step, scheduler step.
"""

import argparse
import time
from pathlib import Path

import cpu_speed  # this folder's: the matmul peak measured as that benchmark measures it
import torch

from agnews.data.datamodule import AGNewsDataModule
from agnews.modeling.module import AGNewsClassifier  # noqa: E402
from agnews.modeling.optim import parameter_groups
from agnews.precision import cpu_bf16, pad_multiple, train_batch_size
from agnews.sources import OFFLINE_MODEL

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {
    # the product as `fit` builds it (the class defaults, `precision auto`, its own optimizer), then one change each
    "agnews": dict(product=True),
    "agnews+loop-adamw": dict(product=True, fused=False),
    "agnews+foreach-adamw": dict(product=True, fused=False, foreach=True),
    "agnews+train-all-layers": dict(product=True, freeze_layers=0),  # the default keeps the lowest 2 frozen
    "agnews+freeze3": dict(product=True, freeze_layers=3),
    # a first-token head (--pooling cls) computes its last layer at that token only; this computes all of it
    "agnews+whole-last-layer": dict(product=True, whole_last_layer=True),
    "agnews+compile": dict(product=True, compile="model"),  # torch.compile, one dynamic-shape graph
    "agnews+compile-blocks": dict(product=True, compile="blocks"),  # each transformer layer compiled, the rest eager
    # On a native-bf16 CPU the product keeps bf16 weights with fp32 masters in the fused AdamW, cast back to bf16
    # once per step (agnews.training.bf16_weights; here MasterWeightsAdamW, the same arithmetic). Instead: Lightning's
    # bf16-mixed (autocast re-casting the fp32 weights on every forward), or its bf16-true (bf16 weights and
    # AdamW state, no masters). Elsewhere these time bf16 emulation.
    "agnews+autocast": dict(product=True, weights="autocast"),
    "agnews+bf16-true": dict(product=True, weights="bf16-true"),
    "agnews+bf16-master": dict(product=True, weights="bf16-master"),
    "agnews+sdpa": dict(product=True, attention="sdpa"),  # `attention auto` trains bf16 with eager attention
    # from the plain encoder (dropout, trained embeddings, SDPA, torch's default AdamW), one option at a time
    "fp32": dict(precision=None),
    "fp32+frozen-emb": dict(precision=None, freeze_embeddings=True),
    "fp32+frozen-emb+eager": dict(precision=None, freeze_embeddings=True, attention="eager"),
    "fp32+frozen-emb+no-dropout": dict(
        precision=None, freeze_embeddings=True, attention_dropout=0.0, hidden_dropout=0.0
    ),
    "fp32+frozen-emb+no-dropout+eager": dict(
        precision=None, freeze_embeddings=True, attention_dropout=0.0, hidden_dropout=0.0, attention="eager"
    ),
    "fp32+frozen-emb+no-dropout+fused": dict(
        precision=None, freeze_embeddings=True, attention_dropout=0.0, hidden_dropout=0.0, fused=True
    ),
    "fp32+frozen-emb+no-dropout+foreach": dict(
        precision=None, freeze_embeddings=True, attention_dropout=0.0, hidden_dropout=0.0, foreach=True
    ),
    "bf16": dict(precision=torch.bfloat16),
    "bf16+fused": dict(precision=torch.bfloat16, fused=True),
    "bf16+frozen-emb": dict(precision=torch.bfloat16, freeze_embeddings=True),
    "bf16+fused+frozen-emb": dict(precision=torch.bfloat16, fused=True, freeze_embeddings=True),
    "bf16+compile": dict(precision=torch.bfloat16, compile=True),
    "bf16+no-attn-dropout": dict(precision=torch.bfloat16, attention_dropout=0.0),
    "bf16+no-dropout": dict(precision=torch.bfloat16, attention_dropout=0.0, hidden_dropout=0.0),
    "bf16+frozen-emb+no-attn-dropout": dict(precision=torch.bfloat16, freeze_embeddings=True, attention_dropout=0.0),
    "bf16+frozen-emb+no-dropout": dict(
        precision=torch.bfloat16, freeze_embeddings=True, attention_dropout=0.0, hidden_dropout=0.0
    ),
    "bf16+frozen-emb+no-dropout+eager": dict(
        precision=torch.bfloat16, freeze_embeddings=True, attention_dropout=0.0, hidden_dropout=0.0, attention="eager"
    ),
    "bf16+frozen-emb+no-attn-dropout+eager": dict(
        precision=torch.bfloat16, freeze_embeddings=True, attention_dropout=0.0, attention="eager"
    ),
    "bf16+frozen-emb+no-hidden-dropout+eager": dict(
        precision=torch.bfloat16, freeze_embeddings=True, hidden_dropout=0.0, attention="eager"
    ),
    "bf16+no-dropout+eager": dict(
        precision=torch.bfloat16, attention_dropout=0.0, hidden_dropout=0.0, attention="eager"
    ),
    "bf16+frozen-emb+eager": dict(precision=torch.bfloat16, freeze_embeddings=True, attention="eager"),
    "bf16+frozen-emb+foreach": dict(precision=torch.bfloat16, freeze_embeddings=True, foreach=True),
    "bf16+frozen-emb+fused": dict(precision=torch.bfloat16, freeze_embeddings=True, fused=True),
    "bf16+fused+compile": dict(precision=torch.bfloat16, fused=True, compile=True),
    "bf16+fused+frozen-emb+compile": dict(precision=torch.bfloat16, fused=True, freeze_embeddings=True, compile=True),
}


# Evaluation (forward only, length-sorted batches of test rows, the module's forward with the class default head,
# first-token): precision, attention kernel, batch size; the last layer whole instead of at the first token, or
# the encoder compiled (which runs its last layer whole).
EVAL_VARIANTS = {
    f"{precision}+{attention}+batch{batch}{last}{compiled}": dict(
        precision=precision, attention=attention, batch=batch, whole_last_layer=bool(last), compile=bool(compiled)
    )
    for precision in ("fp32", "bf16", "bf16-weights")
    for attention in ("sdpa", "eager")
    for batch in (8, 16, 32, 64, 128, 256)
    for last in ("", "+whole-last-layer")
    for compiled in ("", "+compile")
    if not (last and compiled)
}


def eval_batches(args, batch_size: int):
    dm = AGNewsDataModule(
        dataset=args.data,
        tokenizer=args.backbone,
        max_length=128,
        eval_batch_size=batch_size,
        test_size=args.eval_rows,
        pad_to_multiple_of=args.pad_to_multiple_of,
    )
    dm.prepare_data()
    dm.setup("test")
    return list(dm.test_dataloader())


def run_eval(variant: str, data, args) -> float:
    options = EVAL_VARIANTS[variant]
    module = AGNewsClassifier(backbone=args.backbone).eval()
    module.model.set_attn_implementation(options["attention"])
    if options["precision"] == "bf16-weights":
        module.model.to(torch.bfloat16)
    if options["whole_last_layer"] or options["compile"]:
        module.fast.first_token = None
    if options["compile"]:  # inductor with frozen weights (constant-folded, prepacked for oneDNN), one dynamic graph
        from torch._inductor import config as inductor_config

        inductor_config.freezing = True
        module.model = torch.compile(module.model, dynamic=True)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=options["precision"] == "bf16")
    with torch.inference_mode(), autocast:
        start = time.perf_counter()
        for warm in (data[-1], data[0]):  # warm-up (and compile): the longest and the shortest batch
            module(warm["input_ids"], warm["attention_mask"])
        warmup = time.perf_counter() - start
        start = time.perf_counter()
        for batch in data:
            module(batch["input_ids"], batch["attention_mask"])
        seconds = time.perf_counter() - start
    rows = sum(len(b["labels"]) for b in data)
    print(f"{variant:40s} {rows / seconds:7.1f} samples/s   (warm-up {warmup:.1f} s)", flush=True)
    return rows / seconds


def batches(args):
    dm = AGNewsDataModule(
        dataset=args.data,
        tokenizer=args.backbone,
        max_length=128,
        batch_size=args.batch_size,
        pad_to_multiple_of=args.pad_to_multiple_of,
    )
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
    if options.get("product"):
        return run_product(variant, options, data, args, profile)
    module = AGNewsClassifier(backbone=args.backbone, freeze_embeddings=False, dropout=None, attention=None)
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
    forward = lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits  # noqa: E731
    return timed_steps(variant, forward, optimizer, options["precision"], data, args, profile)


def run_product(variant: str, options: dict, data, args, profile: bool) -> float:
    """The module and optimizer `fit` builds, under the precision `--trainer.precision auto` picks on this CPU."""
    from agnews.precision import cpu_bf16

    frozen = {"freeze_layers": options["freeze_layers"]} if "freeze_layers" in options else {}
    module = AGNewsClassifier(backbone=args.backbone, pooling=args.pooling, **frozen)
    dtype = torch.bfloat16 if cpu_bf16()[0] and not args.fp32 else None
    # what `attention auto` trains with
    module.model.set_attn_implementation(options.get("attention") or ("eager" if dtype else "sdpa"))
    weights = options.get("weights") or ("bf16-master" if dtype else None)  # what `precision auto` trains with
    if options.get("whole_last_layer"):
        module.fast.first_token = None
    optimizer = module.optimizer()
    if options.get("compile") == "model":
        module.model.compile(dynamic=True)
    elif options.get("compile") == "blocks":
        for block in module.model.base_model.encoder.layer:
            block.compile(dynamic=True)
    if "fused" in options:  # the same groups, torch's own CPU default or foreach instead of the fused kernel
        hp = module.hparams
        groups = parameter_groups(module.model, hp.weight_decay, hp.learning_rate, hp.layer_decay)
        optimizer = torch.optim.AdamW(groups, lr=hp.learning_rate, foreach=options.get("foreach"))
    if weights == "bf16-master":
        optimizer = MasterWeightsAdamW(optimizer)  # fp32 masters copied now, before the model turns bf16
    if weights in ("bf16-master", "bf16-true"):
        module.model.to(torch.bfloat16)  # in place: the optimizer's parameters are the model's, now bf16
        dtype = None  # no autocast: the weights are bf16 already (the loss is taken in fp32)
    return timed_steps(variant, module, optimizer, dtype, data, args, profile)  # the module's forward: logits


class MasterWeightsAdamW:
    """The product's fused AdamW on fp32 copies of the trained parameters; the model keeps bf16 weights, so a
    forward casts nothing, and the one cast per step is the updated masters back into the bf16 weights."""

    def __init__(self, optimizer: torch.optim.AdamW):
        self.pairs = [(p, p.detach().clone()) for group in optimizer.param_groups for p in group["params"]]
        masters = iter(master for _, master in self.pairs)
        groups = [{**group, "params": [next(masters) for _ in group["params"]]} for group in optimizer.param_groups]
        self.inner = torch.optim.AdamW(groups, lr=optimizer.defaults["lr"], fused=True)

    @torch.no_grad()
    def step(self) -> None:
        for weight, master in self.pairs:
            master.grad = None if weight.grad is None else weight.grad.float()
        self.inner.step()
        for weight, master in self.pairs:
            weight.copy_(master)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for weight, master in self.pairs:
            weight.grad = master.grad = None


def matrix_products(prof, rows: int) -> tuple[float, float]:
    """Prints each matrix product's FLOPs per sample and rate inside the profiled steps (torch.profiler's count:
    what actually ran, frozen layers forward-only, padding included); returns the FLOPs per sample and their
    rate inside the step (FLOPs per second of the products' own time)."""
    flops = seconds = 0.0
    for event in prof.key_averages():
        if event.key in ("aten::mm", "aten::addmm", "aten::bmm") and event.flops:
            rate = event.flops / event.self_cpu_time_total / 1e3
            print(f"{event.key:12s} {event.flops / rows / 1e9:.3f} GFLOP per sample at {rate:.0f} GFLOP/s")
            flops, seconds = flops + event.flops, seconds + event.self_cpu_time_total / 1e6
    print(f"{'products':12s} {flops / rows / 1e9:.3f} GFLOP per sample at {flops / seconds / 1e9:.0f} GFLOP/s")
    return flops / rows, flops / seconds


def timed_steps(variant: str, forward, optimizer, dtype, data, args, profile: bool) -> float:
    def step(batch):
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = forward(batch["input_ids"], batch["attention_mask"])
        loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    start = time.perf_counter()
    for batch in data[: args.warmup]:
        step(batch)
    warm = time.perf_counter() - start
    timed = data[args.warmup :]
    if profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_flops=True) as prof:
            for batch in timed[:5]:
                step(batch)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        products, products_rate = matrix_products(prof, sum(len(b["labels"]) for b in timed[:5]))
    start = time.perf_counter()
    losses = [step(batch) for batch in timed]
    seconds = time.perf_counter() - start
    rows = sum(len(b["labels"]) for b in timed)
    print(f"{variant:40s} {rows / seconds:7.1f} samples/s   (warm-up {warm:.1f} s)", flush=True)
    if profile:  # the share of the matmul peak the step reaches, and the most it could with all else free
        fp32 = variant.startswith("fp32") or (variant.startswith("agnews") and (args.fp32 or not cpu_bf16()[0]))
        peak = cpu_speed.matmul_peak(torch.float32 if fp32 else torch.bfloat16)
        whole = products * rows / seconds
        print(
            f"whole step: {whole / 1e9:.0f} GFLOP/s of matrix products, {100 * whole / peak:.0f}% of this run's "
            f"{'fp32' if fp32 else 'bf16'} matmul peak ({peak / 1e9:.0f} GFLOP/s, 2048x2048); the products alone "
            f"would be {100 * products_rate / peak:.0f}%"
        )
    if args.losses:  # the same batches from the same start for every variant: their training, side by side
        print(f"{'':40s} losses: {' '.join(f'{float(loss):.3f}' for loss in losses)}", flush=True)
    return rows / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT / "data" / "ag_news"))
    parser.add_argument("--backbone", default=OFFLINE_MODEL["backbone"])
    parser.add_argument(
        "--batch-size", type=int, help="training rows per batch (default: what `fit` picks here under `precision auto`)"
    )
    parser.add_argument(
        "--pooling", default=OFFLINE_MODEL["pooling"], help="the product variants' (the offline default's)"
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--profile", nargs="?", const="agnews", choices=list(VARIANTS), help="(default: agnews)")
    parser.add_argument("--fp32", action="store_true", help="the agnews variants in fp32 (`precision 32-true`)")
    parser.add_argument("--rounds", type=int, default=1, help="run the variants this many times, interleaved")
    parser.add_argument("--losses", action="store_true", help="also print each timed step's training loss")
    parser.add_argument(
        "--eval",
        nargs="*",
        choices=list(EVAL_VARIANTS),
        help="time these evaluation variants (all if none named) instead of training steps",
    )
    parser.add_argument("--eval-rows", type=int, default=1920, help="test rows for --eval")
    parser.add_argument(
        "--pad-to-multiple-of",
        type=int,
        help="batch lengths rounded up to a multiple of this (default: as `fit` pads under `precision auto` here: "
        "8 on a native-bf16 CPU unless --fp32, else 1)",
    )
    args = parser.parse_args()
    if args.batch_size is None:
        args.batch_size = train_batch_size("32-true" if args.fp32 else "auto")
    if args.pad_to_multiple_of is None:
        args.pad_to_multiple_of = pad_multiple("bf16" if cpu_bf16()[0] and not args.fp32 else "32")
    if args.eval is not None:
        variants = args.eval or list(EVAL_VARIANTS)
        data = {b: eval_batches(args, b) for b in sorted({EVAL_VARIANTS[v]["batch"] for v in variants})}
        print(f"{args.eval_rows} test rows, threads {torch.get_num_threads()}")
        best = {}
        for _ in range(args.rounds):
            for variant in variants:
                best[variant] = max(
                    best.get(variant, 0.0),
                    run_eval(variant, data[EVAL_VARIANTS[variant]["batch"]], args),
                )
        print("\nbest of", args.rounds, "rounds:")
        for variant, value in best.items():
            print(f"{variant:40s} {value:7.1f} samples/s")
        return
    data = batches(args)
    tokens = sum(int(b["attention_mask"].sum()) for b in data) / sum(len(b["labels"]) for b in data)
    padded = sum(b["input_ids"].numel() for b in data) / sum(len(b["labels"]) for b in data)
    print(
        f"{tokens:.1f} tokens/sample, {padded:.1f} after padding, batch {args.batch_size}, threads {torch.get_num_threads()}"
    )
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
