"""Every capability on every way of running the project: the default run on each path (hub and offline, no
config at all) and every file of configs/, each with a tiny encoder of its own architecture and pooling.

fit, stop with SIGINT mid-epoch, resume (later epochs worse: the best is kept), test, predict, export + a stock
pipeline; DDP on two processes (distilled where the config names a teacher); two nodes launched by torchrun
with the bf16-weights plugin (slow tier)."""

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from agnews import sources
from agnews.checkpoints import read_checkpoint
from agnews.data.teacher import read_teacher
from agnews.export import main as export_main
from agnews.inference import Classifier
from agnews.train import cli_main
from tests.conftest import ROOT, callback_config, make_rows
from tests.test_export import pipeline_labels

CONFIGS = ROOT / "configs"
BF16_PLUGIN = ("--trainer.plugins", "agnews.training.bf16_weights.BF16Weights")  # on any CPU, native bf16 or not
# case: (config file or None, encoder fixture, pooling it runs)
CASES = {
    "hub-default": (None, "tiny_distilbert", "cls"),
    "offline-default": (None, "tiny_bert", "cls"),
    "offline.yaml": (CONFIGS / "offline.yaml", "tiny_bert", "cls"),
    "recipe-minilm.yaml": (CONFIGS / "recipe-minilm.yaml", "tiny_bert", "mean"),
    "recipe.yaml": (CONFIGS / "recipe.yaml", "tiny_mpnet", "mean"),
}


def common(root: Path) -> list[str]:
    return [
        "--data.cache_dir", str(root / "cache"),
        "--trainer.default_root_dir", str(root),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]  # fmt: skip


def names_teacher(config: Path) -> bool:
    return bool((yaml.safe_load(config.read_text()).get("data") or {}).get("teacher"))


def run_flags(case: str, encoder: Path, data: Path, root: Path, teacher: Path) -> list[str]:
    """`fit` flags of one case: its config, the tiny encoder, data and teacher file in place of the real ones
    (named only where a config names them: the default run chooses them itself), tiny sizes."""
    config, _, _ = CASES[case]
    named = ["--config", str(config), "--model.backbone", str(encoder), "--data.dataset", str(data)] if config else []
    named += ["--data.teacher", str(teacher)] if config and names_teacher(config) else []
    sizes = ["--data.max_length", "32", "--data.val_size", "32", "--model.learning_rate", "1e-2"]
    return [*named, *sizes, "--trainer.max_epochs", "3", *common(root)]


@pytest.fixture
def case_run(request, monkeypatch, tmp_path, data_dir, tiny_teacher, no_amx):
    """(flags, encoder folder, pooling) of a case; for the default run, the hub probe and the two paths' encoder,
    data and (offline) teacher file are replaced by tiny ones. The 16-row batch on every CPU: the steps counted
    below are its own."""
    case = request.param
    _, fixture, pooling = CASES[case]
    encoder = request.getfixturevalue(fixture)
    online = case == "hub-default"
    status = (True, "the hub answered (test)") if online else (False, "the hub is unreachable (test)")
    for where in ("agnews.sources", "agnews.modeling.backbone", "agnews.data.loading"):
        monkeypatch.setattr(f"{where}.hub_status", lambda: status)
    monkeypatch.setattr(sources, "HUB_MODEL", {**sources.HUB_MODEL, "backbone": str(encoder)})
    monkeypatch.setattr(sources, "HUB_DATA", {"dataset": str(data_dir), "train_size": 96, "val_size": 32})
    monkeypatch.setattr(sources, "OFFLINE_MODEL", {**sources.OFFLINE_MODEL, "backbone": str(encoder)})
    monkeypatch.setattr(sources, "OFFLINE_DATA", {"dataset": str(data_dir), "teacher": str(tiny_teacher)})
    monkeypatch.chdir(tmp_path)
    return case, encoder, pooling


@pytest.mark.parametrize("case_run", list(CASES), indirect=True)
def test_every_capability_on_every_run(case_run, data_dir, tmp_path, capsys, tiny_teacher):
    case, encoder, pooling = case_run
    root = tmp_path / "run"
    flags = run_flags(case, encoder, data_dir, root, tiny_teacher)

    # fit, stopped by Ctrl-C in the middle of the second epoch (8 batches per epoch)
    stop = callback_config(tmp_path, "sigint", "SignalAtStep", batches=12, signum=int(signal.SIGINT))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(stop), *flags])
    assert exit_info.value.code == 128 + signal.SIGINT
    assert "stopped at epoch 1, step 12" in capsys.readouterr().err

    # resumed with nothing but the run's folder; the epochs after it are worse
    wreck = callback_config(tmp_path, "wreck", "WreckWeightsFromEpoch", epoch=2)
    # `--test true` (make fit) tests the best checkpoint once the fit ends, in the same process
    resumed = cli_main(
        ["fit", "--config", str(wreck), "--ckpt_path", "last", "--trainer.max_epochs", "3", "--test", "true"]
        + common(root)
    )
    hp = resumed.model.hparams
    assert hp.backbone == str(encoder) and hp.pooling == pooling and hp.freeze_embeddings and hp.dropout == 0.0
    assert resumed.datamodule.hparams.dataset == str(data_dir)
    # the offline default and the configs that name a teacher learn from it, across the resume too
    distils = case == "offline-default" or (CASES[case][0] is not None and names_teacher(CASES[case][0]))
    assert (resumed.datamodule.teacher_info is not None) == distils
    last = read_checkpoint(root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    assert ("teacher" in last["AGNewsDataModule"]) == distils  # the checkpoint records the teacher it learned from
    callback = resumed.trainer.checkpoint_callback
    summary = next(c for c in resumed.trainer.callbacks if type(c).__name__ == "FitSummary")
    history = summary.val_history
    assert [v["epoch"] for v in history] == [0, 1, 2]
    best = Path(callback.best_model_path)
    kept = read_checkpoint(best)["epoch"]
    if callback.monitor:  # the best by its monitor, never the wrecked epoch
        pick = max if callback.mode == "max" else min
        top = pick(v[callback.monitor] for v in history)  # a tie keeps the later model
        assert kept == max(v["epoch"] for v in history if v[callback.monitor] == top)
        before = pick(v[callback.monitor] for v in history[:2])
        if pick(before, history[2][callback.monitor]) == before and before != history[2][callback.monitor]:
            assert kept < 2  # the wrecked epoch is worse: the earlier best survived the resume
    else:  # recipe.yaml keeps the final epoch
        assert kept == 2
    assert len(list((root / "lightning_logs").glob("version_*"))) == 1

    report = best.parent / "test_report.json"
    assert Path(resumed.trainer.ckpt_path) == best
    in_fit = json.loads(report.read_text())
    report.unlink()
    tested = cli_main(["test", *common(root)])
    assert Path(tested.trainer.ckpt_path) == best
    # the same figures as `test` started afresh: the best checkpoint's weights, not the last epoch's
    alone = json.loads(report.read_text())
    assert Path(in_fit.pop("checkpoint")).resolve() == Path(alone.pop("checkpoint")).resolve()
    in_fit.pop("seconds"), alone.pop("seconds")
    assert in_fit == alone

    out = tmp_path / "predictions.csv"
    cli_main(["predict", "--prediction.output", str(out), *common(root)])
    with open(out, newline="") as f:
        predicted = list(csv.DictReader(f))
    assert len(predicted) == 80  # the test split

    exported = tmp_path / "exported"
    export_main(["--log_root", str(root / "lightning_logs"), str(exported)])
    texts = make_rows(10, seed=5)[0]
    result = pipeline_labels(exported, texts, tmp_path, trust_remote_code=pooling == "mean")
    assert result.returncode == 0, result.stderr[-2000:]
    reference = Classifier.from_checkpoint(best, precision="32").predict(texts)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [p.label for p in reference]


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
@pytest.mark.parametrize("case", ["hub-default", "offline.yaml", "recipe-minilm.yaml", "recipe.yaml"])
def test_ddp_on_two_processes(case, request, data_dir, tmp_path, tiny_teacher):
    # in a new process the hub cannot be patched: the no-config case names its tiny encoder, which is what the
    # hub default differs by (DistilBERT, first-token pooling); no find_unused_parameters anywhere
    _, fixture, pooling = CASES[case]
    encoder = request.getfixturevalue(fixture)
    root = tmp_path / "ddp"
    flags = run_flags(case, encoder, data_dir, root, tiny_teacher)
    if CASES[case][0] is None:
        flags += ["--model.backbone", str(encoder), "--data.dataset", str(data_dir), "--model.pooling", pooling]
    command = [sys.executable, "-m", "agnews.train", "fit", *flags, "--trainer.max_epochs", "2", "--test", "true"]
    command += ["--trainer.devices", "2", "--trainer.strategy", "ddp"]
    run = subprocess.run(command, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    (version,) = (root / "lightning_logs").iterdir()
    checkpoints = sorted(p.name for p in (version / "checkpoints").iterdir() if p.suffix == ".ckpt")
    assert len(checkpoints) == 2 and "last.ckpt" in checkpoints  # one best checkpoint, and last
    # make fit's test after the fit, on both processes: every test row counted once
    report = json.loads((version / "checkpoints" / "test_report.json").read_text())
    assert report["rows"] == 80 and Path(report["checkpoint"]).name != "last.ckpt"
    last = read_checkpoint(version / "checkpoints" / "last.ckpt")
    assert last["hyper_parameters"]["pooling"] == pooling
    if CASES[case][0] is not None and names_teacher(CASES[case][0]):  # a distilled DDP run records its teacher
        assert "distilling from teacher file" in run.stderr + run.stdout
        assert last["AGNewsDataModule"]["teacher"]["rows"] == read_teacher(tiny_teacher).meta["rows"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_launched_by_torchrun(tiny_bert, data_dir, tmp_path, tiny_teacher):
    # the default model's architecture (first-token BERT), one process on each of two "nodes" on localhost,
    # each node with its own cache (prepared by its own local rank 0) and its own working folder; the bf16-weights
    # plugin is named, so that its DDP path (bf16 copies broadcast, fp32 masters saved) runs on any CPU
    def launch(tries: int = 2) -> list[str]:
        # a node process sometimes aborts in gloo's teardown on this 2-core machine ("terminate called without
        # an active exception"): one more try on a fresh port and fresh folders before failing
        port = free_port()
        nodes = []
        for rank in range(2):
            node = tmp_path / f"node{rank}"
            shutil.rmtree(node, ignore_errors=True)
            node.mkdir()
            command = [
                sys.executable, "-m", "torch.distributed.run",
                "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank),
                "--master_addr", "127.0.0.1", "--master_port", str(port),
                "-m", "agnews.train", "fit",
                "--config", str(CONFIGS / "offline.yaml"),
                "--model.backbone", str(tiny_bert), "--data.dataset", str(data_dir),
                "--data.teacher", str(tiny_teacher),
                "--data.max_length", "32", "--data.val_size", "32", "--trainer.max_epochs", "2", "--data.batch_size", "16",
                "--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.strategy", "ddp",
                "--data.cache_dir", str(node / "cache"), "--trainer.default_root_dir", str(node),
                "--trainer.enable_progress_bar", "false", *BF16_PLUGIN,
            ]  # fmt: skip
            nodes.append(
                subprocess.Popen(command, cwd=node, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            )
        logs = [p.communicate(timeout=400)[0].decode() for p in nodes]
        if any(p.returncode for p in nodes) and tries > 1:
            return launch(tries - 1)
        for node, log in zip(nodes, logs, strict=True):
            assert node.returncode == 0, log[-3000:]
        return logs

    logs = launch()
    for rank in range(2):  # each node tokenized into its own cache (only global rank 0 logs it)
        assert list((tmp_path / f"node{rank}" / "cache").glob("train-*.pt")), logs[rank][-2000:]
    # global rank 0 (node 0) writes the checkpoints: one best and last
    checkpoints = sorted(
        p.name for p in (tmp_path / "node0" / "lightning_logs" / "version_0" / "checkpoints").iterdir()
    )
    assert len(checkpoints) == 2 and "last.ckpt" in checkpoints
    last = read_checkpoint(tmp_path / "node0" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 8  # 128 rows, batch 16, halved between the two nodes, 2 epochs
    assert "precision auto" not in logs[0]  # the named plugin, on any CPU; its checkpoint holds the fp32 masters
    assert all(v.dtype == torch.float32 for v in last["state_dict"].values() if v.is_floating_point())
