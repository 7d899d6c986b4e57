"""What a crash, a signal, a damaged file or a second process must never cost: each guarantee of the README's
Reliability section has its test here."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agnews.checkpoints import read_checkpoint
from agnews.data.datamodule import AGNewsDataModule
from agnews.data.token_cache import read_cache
from agnews.train import cli_main
from tests.conftest import ROOT, callback_config, fit_args


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["state_dict"]


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def fit_with_signal(tmp_path, batches: int, signum: int, args: list[str], capsys=None) -> tuple[int, str]:
    """`fit` that gets a real `signum` after `batches` training batches: its exit code and stderr. In its own
    process (the exit code a shell sees), or in this one when `capsys` is given (where the resumed position is
    what is tested: a process start is ~9 s of imports on a small CPU)."""
    config = tmp_path / f"signal-{int(signum)}.yaml"
    config.write_text(
        "trainer:\n  callbacks:\n    - class_path: tests.conftest.SignalAtStep\n"
        f"      init_args: {{batches: {batches}, signum: {int(signum)}}}\n"
    )
    if capsys is not None:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["fit", "--config", str(config), *args])
        return exit_info.value.code, capsys.readouterr().err
    command = [sys.executable, "-m", "agnews.train", "fit", "--config", str(config), *args]
    run = subprocess.run(command, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    return run.returncode, run.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum, options, batches, stop, kept, process",
    [
        # 8 batches per epoch, 3 epochs: after 13 batches is the middle of the second epoch; the default run,
        # whose second epoch starts from the frozen layers' outputs kept in the first. Both signals stop a
        # `python -m agnews.train` process; the other cases, where the loop's position is what differs, stop
        # a fit in this one
        (signal.SIGINT, (), 13, "epoch 1, step 13", True, True),
        (signal.SIGTERM, (), 13, "epoch 1, step 13", False, True),
        # 5 batches per epoch: the 8th batch is the 3rd of the second epoch
        (signal.SIGTERM, ("--trainer.limit_train_batches", "5"), 8, "epoch 1, step 8", False, False),
        # 2 batches per optimizer step, 4 steps per epoch: a signal after the 11th batch waits for the 12th
        (signal.SIGINT, ("--trainer.accumulate_grad_batches", "2"), 11, "epoch 1, step 6", False, False),
        # a loader worker draws the resumed epoch's batches: it must draw that epoch's order, not epoch 0's
        (signal.SIGINT, ("--data.num_workers", "1"), 13, "epoch 1, step 13", False, False),
        # stopped at the end of an epoch: the resume starts the next one from its first batch
        (signal.SIGINT, (), 16, "epoch 1, step 16", False, False),
    ],
    ids=["sigint", "sigterm", "limit_train_batches", "accumulate_grad_batches", "workers", "epoch_end"],
)
def test_signal_saves_last_and_resume_matches_an_uninterrupted_run(
    signum, options, batches, stop, kept, process, tiny_bert, data_dir, tmp_path, capsys
):
    # no dropout: training then draws no random numbers, and a resumed run can be identical, not just similar.
    # Identical only without the frozen layers' kept outputs: a resumed process computes again, in other batch
    # shapes, what the uninterrupted run kept from its first epoch, and matrix products round by shape on some
    # CPUs (MKL's AVX2 kernels on an AMD EPYC Zen 3: weights 1.7e-5 apart after Adam). With them (the default),
    # the resumed run ends at the same step with the same metrics and weights to that rounding.
    common = ("--trainer.max_epochs", "3", "--model.dropout", "0.0", *options)
    if not kept:
        common += ("--model.frozen_outputs_gb", "0")
    metric_tolerance, weight_tolerance = (1e-5, 1e-4) if kept else (1e-6, 1e-6)
    reference = cli_main(["fit", *fit_args(tiny_bert, data_dir, tmp_path / "ref", *common)])
    assert (reference.model.fast.frozen_outputs.reused > 0) if kept else reference.model.fast.frozen_outputs is None

    root = tmp_path / "run"
    code, stderr = fit_with_signal(
        tmp_path, batches, signum, fit_args(tiny_bert, data_dir, root, *common), None if process else capsys
    )
    assert code == 128 + signum, stderr[-2000:]
    assert f"{signal.Signals(signum).name}: stopped at {stop}" in stderr
    folder = root / "lightning_logs" / "version_0" / "checkpoints"
    last = read_checkpoint(folder / "last.ckpt")
    assert f"epoch {last['epoch']}, step {last['global_step']}" == stop
    assert "optimizer_states" in last and last["lr_schedulers"]
    assert len([p for p in folder.glob("epoch=*.ckpt")]) == 1  # the best of the finished epoch, untouched

    resumed = cli_main(["fit", *fit_args(tiny_bert, data_dir, root, *common), "--ckpt_path", "last"])
    assert resumed.trainer.global_step == reference.trainer.global_step
    for key in ("val_loss", "val_acc"):
        assert float(resumed.trainer.callback_metrics[key]) == pytest.approx(
            float(reference.trainer.callback_metrics[key]), abs=metric_tolerance
        )
    final = weights(Path(resumed.trainer.checkpoint_callback.last_model_path))
    expected = weights(Path(reference.trainer.checkpoint_callback.last_model_path))
    for name, tensor in expected.items():
        torch.testing.assert_close(final[name], tensor, atol=weight_tolerance, rtol=1e-5)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_from_the_last_epochs_checkpoint(tiny_bert, data_dir, tmp_path):
    # SIGKILL gives no chance to save: the run resumes from the last.ckpt of the last finished epoch
    root = tmp_path / "run"
    common = ("--trainer.max_epochs", "3", "--model.dropout", "0.0")
    code, _ = fit_with_signal(tmp_path, 13, signal.SIGKILL, fit_args(tiny_bert, data_dir, root, *common))
    assert code == -signal.SIGKILL
    folder = root / "lightning_logs" / "version_0" / "checkpoints"
    assert not list(folder.glob(".*tmp*")) and not list(folder.glob("*.tmp"))  # nothing half-written left
    last = read_checkpoint(folder / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (0, 8)  # the end of the first epoch

    resumed = cli_main(["fit", *fit_args(tiny_bert, data_dir, root, *common), "--ckpt_path", "last"])
    assert resumed.trainer.global_step == 24 and resumed.trainer.current_epoch == 3
    metrics = resumed.trainer.callback_metrics
    assert all(torch.isfinite(metrics[k]) for k in ("val_loss", "val_acc", "train_loss_epoch"))


def val_losses(cli) -> list[float]:
    summary = next(c for c in cli.trainer.callbacks if type(c).__name__ == "FitSummary")
    return [v["val_loss"] for v in summary.val_history]


def test_same_seed_same_curves_and_the_seed_is_saved(tiny_bert, data_dir, tmp_path, capsys):
    # default dropout on: the seed decides the masks, the head's initialisation and the batch order
    runs = [
        cli_main(
            [
                "fit",
                *fit_args(
                    tiny_bert, data_dir, tmp_path / f"r{i}", "--trainer.max_epochs", "2", "--seed_everything", "7"
                ),
            ]
        )
        for i in range(2)
    ]
    assert val_losses(runs[0]) == val_losses(runs[1]) and len(val_losses(runs[0])) == 2
    other = cli_main(
        ["fit", *fit_args(tiny_bert, data_dir, tmp_path / "r2", "--trainer.max_epochs", "2", "--seed_everything", "8")]
    )
    assert val_losses(other) != val_losses(runs[0])
    assert "seed: 7" in capsys.readouterr().out
    config = (tmp_path / "r0" / "lightning_logs" / "version_0" / "config.yaml").read_text()
    assert "seed_everything: 7" in config


def make_dm(data_dir, tiny_bert, cache) -> AGNewsDataModule:
    return AGNewsDataModule(dataset=str(data_dir), tokenizer=str(tiny_bert), max_length=32, cache_dir=str(cache))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "tampered"])
def test_damaged_cache_is_detected_and_rebuilt(damage, data_dir, tiny_bert, tmp_path, caplog):
    make_dm(data_dir, tiny_bert, tmp_path).prepare_data()
    train = next(p for p in tmp_path.glob("train-*.pt"))
    good = read_cache(train)
    if damage == "truncated":
        train.write_bytes(train.read_bytes()[: train.stat().st_size // 2])
    elif damage == "garbage":
        train.write_bytes(os.urandom(4096))
    else:  # loads fine, shapes fine, one label changed
        tensors = torch.load(train, weights_only=True)
        tensors["labels"][0] = (tensors["labels"][0] + 1) % 4
        torch.save(tensors, train)
    dm = make_dm(data_dir, tiny_bert, tmp_path)
    dm.prepare_data()
    assert "rebuilding it" in caplog.text
    dm.setup("fit")
    rebuilt = read_cache(train)
    assert torch.equal(rebuilt["labels"], good["labels"]) and torch.equal(rebuilt["input_ids"], good["input_ids"])


def test_damaged_cache_at_setup_is_a_clear_error(data_dir, tiny_bert, tmp_path):
    dm = make_dm(data_dir, tiny_bert, tmp_path)
    dm.prepare_data()
    train = next(p for p in tmp_path.glob("train-*.pt"))
    train.write_bytes(b"not a cache")
    from agnews.errors import AGNewsError

    with pytest.raises(AGNewsError, match="does not load.*prepare_data\\(\\) rebuilds it"):
        dm.setup("fit")


def _prepare(data_dir: str, tiny_bert: str, cache: str, queue) -> None:
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addHandler(handler)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.INFO)
    make_dm(data_dir, tiny_bert, cache).prepare_data()
    queue.put(records)


def test_two_processes_preparing_one_cache(data_dir, tiny_bert, tmp_path):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    cache = tmp_path / "cache"
    workers = [
        context.Process(target=_prepare, args=(str(data_dir), str(tiny_bert), str(cache), queue)) for _ in range(2)
    ]
    for w in workers:
        w.start()
    logs = [queue.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    files = sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock"))
    assert len(files) == 2 and all(f.endswith(".pt") and not f.startswith(".") for f in files)  # train and test
    for f in files:
        read_cache(cache / f)
    misses = [m for log in logs for m in log if "cache miss" in m]
    assert len(misses) == 2  # each split tokenized once, by one of the two processes; the other waited and reused it


def test_checkpoint_write_failure_keeps_earlier_checkpoints(tiny_bert, data_dir, tmp_path, monkeypatch, capsys):
    from lightning.fabric.plugins.io import torch_io

    saves = []
    real_save = torch_io._atomic_save

    def save_until_read_only(checkpoint, path):
        if len(saves) >= 2:  # epoch 1's best and last were written; then the folder turns read-only
            raise PermissionError(13, "Permission denied", str(path))
        saves.append(path)
        real_save(checkpoint, path)

    monkeypatch.setattr(torch_io, "_atomic_save", save_until_read_only)
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", *fit_args(tiny_bert, data_dir, tmp_path, "--trainer.max_epochs", "3")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "cannot write checkpoint" in err and "Permission denied" in err and "earlier checkpoints are kept" in err
    folder = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    kept = sorted(p.name for p in folder.iterdir())
    assert kept == sorted(Path(p).name for p in saves)
    for name in kept:
        assert read_checkpoint(folder / name)["epoch"] == 0


def test_truncated_checkpoint_is_refused_by_test_and_fit(trained, tmp_path, capsys):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(trained.checkpoint.read_bytes()[:-4000])
    for sub in ("test", "fit"):
        with pytest.raises(SystemExit) as exit_:
            cli_main(
                [
                    sub,
                    "--ckpt_path",
                    str(broken),
                    "--data.cache_dir",
                    str(trained.cache),
                    "--data.dataset",
                    str(trained.data),
                    "--trainer.default_root_dir",
                    str(tmp_path),
                ]
            )
        assert exit_.value.code == 2
        assert "damaged or truncated" in capsys.readouterr().err


def test_a_resume_whose_later_epochs_are_worse_keeps_the_earlier_best(
    tiny_bert, data_dir, tmp_path, monkeypatch, capsys
):
    root = tmp_path / "run"
    first = cli_main(["fit", *fit_args(tiny_bert, data_dir, root, "--trainer.max_epochs", "2")])
    best = Path(first.trainer.checkpoint_callback.best_model_path)
    best_score = float(first.trainer.checkpoint_callback.best_model_score)
    capsys.readouterr()
    # the resume names neither encoder nor data, and the hub "answers": all of it must come from the checkpoint
    monkeypatch.setattr("agnews.sources.hub_status", lambda: pytest.fail("a resume must not choose sources again"))
    wreck = callback_config(tmp_path, "wreck", "WreckWeightsFromEpoch", epoch=2)
    resumed = cli_main(
        [
            "fit",
            "--config",
            str(wreck),
            "--ckpt_path",
            "last",
            "--trainer.max_epochs",
            "4",
            "--trainer.default_root_dir",
            str(root),
            "--data.cache_dir",
            str(root / "cache"),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    out = capsys.readouterr()
    assert resumed.model.hparams.backbone == str(tiny_bert) and resumed.datamodule.hparams.dataset == str(data_dir)
    assert resumed.datamodule.hparams.max_length == 32 and resumed.datamodule.hparams.val_size == 32
    # one run folder; its best is still the first run's, with its score; the worse epochs were not kept
    assert [p.name for p in (root / "lightning_logs").iterdir()] == ["version_0"]
    callback = resumed.trainer.checkpoint_callback
    assert Path(callback.best_model_path) == best and float(callback.best_model_score) == best_score
    assert sorted(p.name for p in best.parent.iterdir()) == sorted([best.name, "last.ckpt"])
    summary = next(c for c in resumed.trainer.callbacks if type(c).__name__ == "FitSummary")
    assert [v["epoch"] for v in summary.val_history] == [0, 1, 2, 3]  # the whole training
    kept = int(best.name.split("-")[0].split("=")[1])
    assert f"kept epoch {kept} (best val_loss)" in out.out and f"best checkpoint: {best}" in out.out
    assert min(summary.val_history[2:], key=lambda v: v["val_loss"])["val_loss"] > best_score
    tested = cli_main(["test", "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false"])
    assert Path(tested.trainer.ckpt_path) == best


@pytest.mark.slow
def test_two_processes_train_as_one_and_resume_exactly(tiny_bert, data_dir, tmp_path):
    # one uninterrupted DDP run is both the check that two processes train as one and the reference of the
    # resume (each DDP run is two process starts: the suite's costliest kind of step)
    ddp = ("--trainer.max_epochs", "3", "--model.dropout", "0.0", "--trainer.devices", "2", "--trainer.strategy", "ddp")

    def fit(root, *extra, config=None):
        command = [sys.executable, "-m", "agnews.train", "fit", *(["--config", str(config)] if config else [])]
        command += [*fit_args(tiny_bert, data_dir, root, *ddp), *extra]
        return subprocess.run(command, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=400)

    reference = fit(tmp_path / "ref")
    assert reference.returncode == 0, reference.stderr[-3000:]
    log = reference.stdout + reference.stderr
    assert log.count("cache miss for train") == 1  # prepared once, by local rank 0
    runs = list((tmp_path / "ref" / "lightning_logs").iterdir())
    assert len(runs) == 1
    checkpoints = sorted(p.name for p in (runs[0] / "checkpoints").iterdir())
    assert len(checkpoints) == 2 and "last.ckpt" in checkpoints  # one best + last, written by rank 0 only
    # 128 training rows, batch 16: 8 steps per epoch in one process, 4 when each process trains on its half
    assert read_checkpoint(runs[0] / "checkpoints" / "last.ckpt")["global_step"] == 12
    best = runs[0] / "checkpoints" / next(c for c in checkpoints if c != "last.ckpt")

    # the validation accuracy DDP logged (synchronised over both halves) is what one process measures
    single_args = fit_args(tiny_bert, data_dir, tmp_path / "single")
    single = cli_main(["validate", "--ckpt_path", str(best), *single_args, "--trainer.precision", "bf16-mixed"])
    ddp_val_acc = float(best.name.split("val_acc=")[1].removesuffix(".ckpt"))
    assert float(single.trainer.callback_metrics["val_acc"]) == pytest.approx(ddp_val_acc, abs=1e-4)

    # test on two processes: every test row counted once, the same report as one process writes
    tested = cli_main(["test", "--ckpt_path", str(best), *single_args])
    single_report = json.loads((best.parent / "test_report.json").read_text())
    command = [sys.executable, "-m", "agnews.train", "test", "--ckpt_path", str(best)]
    command += [*fit_args(tiny_bert, data_dir, tmp_path / "t2"), "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    run = subprocess.run(command, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    ddp_report = json.loads((best.parent / "test_report.json").read_text())
    assert ddp_report["accuracy"] == pytest.approx(single_report["accuracy"], abs=1e-6)
    assert ddp_report["confusion_matrix"] == single_report["confusion_matrix"]
    assert float(tested.trainer.callback_metrics["test_acc"]) == pytest.approx(single_report["accuracy"], abs=1e-6)

    # stopped mid-epoch and resumed: Lightning rebuilds the training loader with a DistributedSampler, and the
    # resumed position must reach it. 4 batches per epoch in each process: after 6, the middle of the second epoch
    root = tmp_path / "run"
    signal_config = callback_config(tmp_path, "sigint", "SignalAtStep", batches=6, signum=int(signal.SIGINT))
    stopped = fit(root, config=signal_config)
    assert stopped.returncode == 128 + signal.SIGINT, stopped.stderr[-3000:]
    assert "stopped at epoch 1, step 6" in stopped.stderr
    resumed = fit(root, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = weights(root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    expected = weights(runs[0] / "checkpoints" / "last.ckpt")
    for name, tensor in expected.items():
        torch.testing.assert_close(final[name], tensor, atol=1e-6, rtol=1e-5)


def test_last_checkpoint_follows_every_epoch_even_without_a_new_best(tiny_bert, data_dir, tmp_path):
    # the monitored value never improves after epoch 0 (the smallest epoch number is "best")
    cli = cli_main(
        [
            "fit",
            *fit_args(
                tiny_bert,
                data_dir,
                tmp_path,
                "--trainer.max_epochs",
                "3",
                "--checkpoint.monitor",
                "epoch",
                "--checkpoint.mode",
                "min",
            ),
        ]
    )
    folder = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    assert read_checkpoint(folder / "last.ckpt")["global_step"] == cli.trainer.global_step == 24
    assert [read_checkpoint(p)["epoch"] for p in folder.glob("epoch=*.ckpt")] == [0]
