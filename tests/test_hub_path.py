"""The online default, end to end, against a hub on localhost (tests/local_hub.py) through the real Hugging Face
clients: nothing patched, each run a `python -m agnews.train` process as `make fit` starts it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.local_hub import DATASET_REPO, MODEL_REPO, LocalHub

# the hub serves 8,000 of the official training rows: the budget draws its 6,000 + 1,000 from them; where a fault
# is tested, 1,000 are enough (SMALL draws 640 + 200) and tokenizing fewer saves seconds per run
TRAIN_ROWS, TEST_ROWS = 8000, 400
FAULT_ROWS = 1000


@pytest.fixture(scope="module")
def hub():
    server = LocalHub(train_rows=TRAIN_ROWS, test_rows=TEST_ROWS).start()
    yield server
    server.close()


@pytest.fixture
def home(tmp_path) -> Path:
    """A user's machine: an empty home folder (Hugging Face cache, agnews cache) and a working folder."""
    (tmp_path / "home").mkdir()
    (tmp_path / "work").mkdir()
    return tmp_path


def agnews(
    home: Path, hub: LocalHub | None, *args: str, offline: bool = False, timeout: int = 600, download_timeout: int = 5
):
    env = {
        **os.environ,
        "HOME": str(home / "home"),
        "HF_HOME": str(home / "home" / ".cache" / "huggingface"),
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "HF_HUB_DOWNLOAD_TIMEOUT": str(download_timeout),
        "PYTHONPATH": str(ROOT),
    }
    env.pop("HF_ENDPOINT", None)
    if hub is not None:
        env["HF_ENDPOINT"] = hub.url
    command = [sys.executable, "-m", "agnews.train", *args]
    return subprocess.run(command, cwd=home / "work", env=env, capture_output=True, text=True, timeout=timeout)


FAST = ["--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"]
# where the budget and the training are not what is tested: a few batches of each
SMALL = [*FAST, "--data.train_size", "640", "--data.val_size", "200"]
SMALL += ["--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "2"]


def one_line_error(run, says: str) -> None:
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("agnews: error: ") and says in last, last


@pytest.mark.slow
def test_the_default_run_through_a_local_hub(hub, home):
    # 1. make fit's command: the hub answers, so the hub path is chosen, downloaded, trained (20 batches: where
    # the encoder and data come from is what is tested) and tested
    brief = [*FAST, "--trainer.limit_train_batches", "20"]
    fit = agnews(home, hub, "fit", *brief, "--test", "true")
    assert fit.returncode == 0, fit.stderr[-3000:]
    first_line = next(line for line in fit.stderr.splitlines() if line.startswith("agnews: "))
    assert first_line.startswith(f"agnews: encoder {MODEL_REPO} and data {DATASET_REPO} from the hub")
    assert "6,000 training rows, 1,000 validation rows" in fit.stderr + fit.stdout
    assert any(r.startswith("GET /distilbert-base-uncased/resolve/") for r in hub.requests)
    report = home / "work" / "lightning_logs" / "version_0" / "checkpoints" / "test_report.md"
    assert report.is_file() and MODEL_REPO in report.read_text() and f"{TEST_ROWS:,} rows" in report.read_text()

    # 2. a second run reads everything from the caches: no file is downloaded again
    seen = len(hub.requests)
    again = agnews(home, hub, "fit", *brief)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not [r for r in hub.requests[seen:] if r.startswith("GET") and "/resolve/" in r]
    assert "cache hit for train" in again.stderr + again.stdout

    # 3. the server gone and HF_HUB_OFFLINE=1: test and predict from the checkpoint alone
    test = agnews(home, None, "test", "--trainer.enable_progress_bar", "false", offline=True)
    assert test.returncode == 0, test.stderr[-3000:]
    texts = home / "work" / "news.txt"
    texts.write_text("Stocks slid as oil rose\nThe team won the league\n")
    predict = agnews(
        home, None, "predict", "--data.predict_file", str(texts), "--prediction.output", "out.csv", offline=True
    )
    assert predict.returncode == 0, predict.stderr[-3000:]
    assert len((home / "work" / "out.csv").read_text().splitlines()) == 3


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault, says",
    [
        ("500", "the hub answered HTTP 500"),
        ("stall", "cannot download backbone"),
        ("truncate", "cannot download backbone"),
        ("vanish", "cannot download backbone"),
    ],
)
def test_hub_faults_are_one_line_and_leave_nothing_half_cached(fault, says, home):
    server = LocalHub(train_rows=FAULT_ROWS, test_rows=TEST_ROWS).start()
    try:
        server.faults.add(fault)
        # a stalled download fails after huggingface_hub's six tries of the read timeout: 1 s each here
        failed = agnews(home, server, "fit", *SMALL, timeout=300, download_timeout=1)
        if fault == "500":  # the probe hears a broken hub: the default run takes the offline path instead ...
            assert failed.returncode == 0, failed.stderr[-3000:]
            assert "offline default" in failed.stderr and says in failed.stderr
            # ... and a run that names the hub's encoder and data stops with one line
            named = ["--model.backbone", MODEL_REPO, "--data.dataset", DATASET_REPO]
            one_line_error(agnews(home, server, "fit", *SMALL, *named), "cannot download backbone config")
            return
        one_line_error(failed, says)
        assert not list((home / "work").glob("lightning_logs/version_*"))
        server.faults.clear()
        healthy = agnews(home, server, "fit", *SMALL)  # nothing cleaned by hand
        assert healthy.returncode == 0, healthy.stderr[-3000:]
    finally:
        server.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    "dataset, says",
    [
        ({"splits": ("train",)}, "has no 'test' split"),
        ({"labels_shift": 2}, "labels must be integers 0..3"),
    ],
    ids=["no_test_split", "labels_out_of_range"],
)
def test_bad_hub_datasets_are_one_line(dataset, says, home):
    server = LocalHub(train_rows=FAULT_ROWS, test_rows=TEST_ROWS, **dataset).start()
    try:
        failed = agnews(home, server, "fit", *SMALL)
        one_line_error(failed, says)
        assert not list((home / "work").glob("lightning_logs/version_*"))
        assert not list((home / "home" / ".cache" / "agnews").glob("*.pt"))  # no cache file that looks valid
    finally:
        server.close()
