import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from agnews import sources
from agnews.data.loading import load_raw
from agnews.train import cli_main
from tests.test_precision import AMX_FLAGS, ZEN4_FLAGS, fake_cpu
from tests.test_train import tiny_args


@pytest.fixture
def hub(monkeypatch):
    """Sets what the hub probe answers, and counts the probes."""
    state = {"online": False, "probes": 0}

    def status():
        state["probes"] += 1
        return (True, "the hub answered") if state["online"] else (False, "the hub is unreachable (test)")

    monkeypatch.setattr(sources, "hub_status", status)
    monkeypatch.setattr("agnews.modeling.backbone.hub_status", status)
    monkeypatch.setattr("agnews.data.loading.hub_status", status)
    return state


@pytest.fixture
def offline_default(monkeypatch, tiny_bert, data_dir):
    """The offline default with a tiny encoder and tiny data in place of MiniLM and the bundled rows."""
    monkeypatch.setattr(sources, "OFFLINE_MODEL", {**sources.OFFLINE_MODEL, "backbone": str(tiny_bert)})
    monkeypatch.setattr(sources, "OFFLINE_DATA", {"dataset": str(data_dir)})


def run_args(tmp_path):
    return [
        "--data.max_length",
        "32",
        "--data.cache_dir",
        str(tmp_path / "cache"),
        "--trainer.max_epochs",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
    ]


def test_unset_encoder_and_data_fall_back_when_the_hub_is_unreachable(
    hub, offline_default, tiny_bert, data_dir, tmp_path, monkeypatch, capsys, caplog, no_amx
):
    monkeypatch.chdir(tmp_path)
    cli = cli_main(["fit", *run_args(tmp_path)])
    err = capsys.readouterr()
    line = f"offline default: encoder {tiny_bert} and data {data_dir} (the hub is unreachable (test))"
    assert err.err.splitlines()[0] == f"agnews: {line}"  # the first thing the run says
    assert cli.model.hparams.backbone == str(tiny_bert) and cli.datamodule.hparams.dataset == str(data_dir)
    assert cli.model.hparams.learning_rate == 1e-4 and cli.model.hparams.pooling == "cls"
    assert cli.model.hparams.chosen_by == line and f"chosen by agnews: {line}" in err.out
    assert "min per epoch (9 batches)" in caplog.text  # the estimate, once the first batches have run
    cli = cli_main(["test", "--data.cache_dir", str(tmp_path / "cache"), "--trainer.enable_progress_bar", "false"])
    report = (
        cli.trainer.ckpt_path and open(os.path.join(os.path.dirname(cli.trainer.ckpt_path), "test_report.md")).read()
    )
    assert line in report and str(tiny_bert) in report


def test_the_hub_default_is_cpu_sized_when_the_hub_answers(hub):
    hub["online"] = True
    model, data, line = sources.choose_defaults(True, True)
    assert model == {"backbone": "distilbert-base-uncased", "learning_rate": 5e-5, "pooling": "cls"}
    assert data == {"dataset": "fancyzhx/ag_news", "train_size": 6000, "val_size": 1000}
    assert line.startswith("encoder distilbert-base-uncased and data fancyzhx/ag_news from the hub")


def test_named_backbone_or_dataset_never_falls_back(hub):
    assert sources.choose_defaults(False, False) == ({}, {}, None) and hub["probes"] == 0
    model, data, line = sources.choose_defaults(False, True)
    assert model == {} and data == {"dataset": str(sources.BUNDLED_DATASET), "teacher": str(sources.BUNDLED_TEACHER)}
    assert line == (
        f"offline default: data {sources.BUNDLED_DATASET} and teacher {sources.BUNDLED_TEACHER} "
        "(the hub is unreachable (test))"
    )


def print_config(args: list[str], capsys) -> dict:
    import yaml

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *args, "--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("online", [False, True])
def test_what_the_user_gives_beats_the_choice(online, hub, offline_default, tiny_bert, data_dir, no_amx, capsys):
    hub["online"] = online
    chosen = print_config([], capsys)
    expected = (
        (sources.HUB_BACKBONE, 5e-5, "cls", sources.HUB_DATASET, 6000, 1000)
        if online
        else (str(tiny_bert), 1e-4, "cls", str(data_dir), None, 0.1)
    )
    model, data = chosen["model"], chosen["data"]
    assert (model["backbone"], model["learning_rate"], model["pooling"]) == expected[:3]
    assert (data["dataset"], data.get("train_size"), data["val_size"]) == expected[3:]
    assert data["tokenizer"] == model["backbone"] and model["chosen_by"]
    # typed settings win over the chosen ones; the rest of the bundle is still chosen
    typed = print_config(["--model.learning_rate", "3e-4", "--data.val_size", "50"], capsys)
    assert typed["model"]["learning_rate"] == 3e-4 and typed["model"]["backbone"] == expected[0]
    assert typed["data"]["val_size"] == 50 and typed["data"].get("train_size") == expected[4]
    # a named dataset gets none of the default run's data settings (no hub budget on the user's folder)
    named = print_config(["--data.dataset", str(data_dir)], capsys)
    assert named["data"]["dataset"] == str(data_dir) and named["data"]["val_size"] == 0.1
    assert named["data"].get("train_size") is None and named["model"]["backbone"] == expected[0]


def test_named_encoder_and_data_skip_the_probe(hub, tiny_bert, data_dir, capsys):
    named = print_config(["--model.backbone", str(tiny_bert), "--data.dataset", str(data_dir)], capsys)
    assert hub["probes"] == 0 and named["model"]["backbone"] == str(tiny_bert)
    assert named["model"].get("chosen_by") is None and named["model"]["pooling"] == "cls"


@pytest.mark.timing
def test_named_hub_model_fails_in_seconds_with_one_line(tmp_path, data_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}

    def run(*args):
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "agnews.train", *args], cwd=tmp_path, capture_output=True, text=True, env=env
        )
        return result, time.perf_counter() - start

    _, start_up = run("fit", "--help")  # importing torch, Lightning and transformers: seconds on a small CPU
    result, seconds = run("fit", "--model.backbone", "distilbert-base-uncased", "--data.dataset", str(data_dir))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("agnews: error: cannot download backbone config 'distilbert-base-uncased': the hub is unreachable")
    )
    # no retries: the error comes within the probe's time of a plain start (before: 35 s of download retries)
    assert seconds < start_up + sources.PROBE_SECONDS, (seconds, start_up)
    assert not (tmp_path / "lightning_logs").exists()


def test_half_downloaded_hub_cache_is_one_line(hub, tmp_path, data_dir, capsys):
    # a snapshot with its config but no weights, as an interrupted download leaves it
    snapshot = tmp_path / "hf" / "hub" / "models--distilbert-base-uncased" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text('{"model_type": "distilbert"}')
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "agnews.train",
            "fit",
            "--model.backbone",
            "distilbert-base-uncased",
            "--data.dataset",
            str(data_dir),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "agnews: error: cannot download" in result.stderr.strip().splitlines()[-1]
    assert "HF_HUB_OFFLINE is set" in result.stderr


def test_probe_of_a_hub_that_hangs_gives_up_in_seconds(monkeypatch):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()  # accepts connections and never answers
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    sources.hub_status.cache_clear()
    try:
        start = time.perf_counter()
        online, why = sources.hub_status()
        assert not online and time.perf_counter() - start < sources.PROBE_SECONDS + 1.5
        assert "did not answer" in why or "timed out" in why
    finally:
        sources.hub_status.cache_clear()
        server.close()


def test_probe_honours_hf_hub_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sources.hub_status.cache_clear()
    try:
        assert sources.hub_status() == (False, "HF_HUB_OFFLINE is set")
    finally:
        sources.hub_status.cache_clear()


def test_bundled_rows_load_as_ag_news():
    raw, names = load_raw(str(sources.BUNDLED_DATASET))
    assert (len(raw["train"]), len(raw["test"])) == (10870, 7600)
    assert names == ["World", "Sports", "Business", "Sci/Tech"]
    assert sorted(set(raw["test"]["label"])) == [0, 1, 2, 3]


def test_missing_bundled_rows_are_one_line(hub, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sources, "BUNDLED_DATASET", tmp_path / "data" / "ag_news")
    monkeypatch.setattr(sources, "OFFLINE_DATA", {"dataset": str(tmp_path / "data" / "ag_news")})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--model.backbone", "x", *run_args(tmp_path)])
    assert exit_info.value.code == 2
    assert "the bundled AG News rows are missing" in capsys.readouterr().err
    assert not (tmp_path / "lightning_logs").exists()


def test_named_hub_dataset_without_the_hub_is_one_line(hub, tiny_bert, data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = tiny_args(tiny_bert, data_dir, tmp_path)
    args[args.index("--data.dataset") + 1] = "someone/news"
    with pytest.raises(SystemExit):
        cli_main(["fit", *args])
    assert "cannot download dataset 'someone/news': the hub is unreachable (test)" in capsys.readouterr().err


def test_bundled_rows_are_the_real_copy():
    from tests.conftest import SHARED_AG_NEWS

    if not SHARED_AG_NEWS.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{SHARED_AG_NEWS} is missing, and CI must compare the bundled rows with it")
        pytest.skip(f"needs {SHARED_AG_NEWS}")
    for name in ("train.parquet", "test.parquet"):
        assert (sources.BUNDLED_DATASET / name).read_bytes() == (SHARED_AG_NEWS / name).read_bytes()


def native_bf16_cpu(monkeypatch, amx: bool) -> None:
    fake_cpu(monkeypatch, True, AMX_FLAGS if amx else ZEN4_FLAGS)


@pytest.mark.parametrize("amx", [True, False])
def test_fit_chooses_the_training_batch_for_the_cpu_and_scales_the_rate_with_it(
    amx, hub, offline_default, monkeypatch, capsys
):
    import yaml

    native_bf16_cpu(monkeypatch, amx)

    def run(*args):
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["fit", *args, "--print_config"])
        assert exit_info.value.code == 0
        out, err = capsys.readouterr()
        config = yaml.safe_load(out)
        return config["data"]["batch_size"], config["model"]["learning_rate"], err

    batch, rate, err = run()
    if amx:  # 32 rows at the 16-row rate x sqrt(2), said in one line
        assert (batch, rate) == (32, pytest.approx(1e-4 * 2**0.5))
        assert "agnews: training batch 32 rows (bf16 on a CPU with AMX" in err and "--data.batch_size N" in err
    else:
        assert (batch, rate) == (16, 1e-4) and "training batch" not in err
    # a typed rate is the 16-row one too; a typed batch takes the rate as given
    assert run("--model.learning_rate", "3e-4")[:2] == (batch, pytest.approx(3e-4 * (batch / 16) ** 0.5))
    assert run("--data.batch_size", "16")[:2] == (16, 1e-4)
    assert run("--data.batch_size", "32")[:2] == (32, 1e-4)
    # fp32 named on the AMX CPU: no faster at 32 rows
    assert run("--trainer.precision", "32-true")[:2] == (16, 1e-4)


def test_the_chosen_batch_and_rate_hold_across_resume_test_and_predict(
    hub, offline_default, tmp_path, monkeypatch, capsys
):
    # the run's checkpoints hold the chosen batch and the scaled rate: a resume takes them, not scaled again
    native_bf16_cpu(monkeypatch, amx=True)
    monkeypatch.chdir(tmp_path)
    first = cli_main(["fit", *run_args(tmp_path)])
    assert (first.datamodule.hparams.batch_size, first.model.hparams.learning_rate) == (
        32,
        pytest.approx(1e-4 * 2**0.5),
    )
    assert first.trainer.global_step == 5  # 144 training rows in batches of 32 (16 would take 9)
    resumed = cli_main(
        ["fit", *run_args(tmp_path), "--trainer.max_epochs", "2", "--ckpt_path", "last", "--test", "true"]
    )
    assert resumed.datamodule.hparams.batch_size == 32 and resumed.trainer.global_step == 10
    assert resumed.model.hparams.learning_rate == pytest.approx(1e-4 * 2**0.5)
    assert capsys.readouterr().err.count("training batch 32 rows") == 1  # said by the fit that chose it
    out = tmp_path / "predictions.csv"
    cli_main(
        ["predict", *run_args(tmp_path)[:4], "--prediction.output", str(out), "--trainer.enable_progress_bar", "false"]
    )
    assert len(out.read_text().splitlines()) == 1 + 80  # header + every test row
