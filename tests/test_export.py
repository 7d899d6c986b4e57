import json
import os
import subprocess
import sys

import pytest

from agnews.export import main as export_main
from agnews.inference import Classifier
from tests.conftest import fit_args, make_rows
from tests.test_inference import TEXTS


def test_export_then_pipeline_in_a_fresh_process_predicts_like_the_checkpoint(trained, tmp_path):
    out = tmp_path / "exported"
    export_main(["--ckpt_path", str(trained.checkpoint), str(out)])
    texts = TEXTS + make_rows(10, seed=5)[0]
    script = (
        "import json, sys\n"
        "from transformers import pipeline\n"
        "pipe = pipeline('text-classification', model=sys.argv[1])\n"
        "print(json.dumps([r['label'] for r in pipe(json.loads(sys.argv[2]), truncation=True)]))\n"
    )
    # a clean interpreter in another folder: nothing of agnews is imported or importable there
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", script, str(out), json.dumps(texts)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    # the pipeline runs fp32: so does the checkpoint here (auto would be bf16 on a native-bf16 CPU)
    expected = [p.label for p in Classifier.from_checkpoint(trained.checkpoint, precision="32").predict(texts)]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "World", "1": "Sports", "2": "Business", "3": "Sci/Tech"}


def test_export_refuses_to_replace_a_folder_unless_asked(trained, tmp_path, capsys):
    out = tmp_path / "exported"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_:
        export_main(["--ckpt_path", str(trained.checkpoint), str(out)])
    assert exit_.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
    export_main(["--ckpt_path", "best", "--log_root", str(trained.log_root), "--overwrite", str(out)])
    assert (out / "config.json").is_file() and not (out / "notes.txt").exists()
    assert not list(tmp_path.glob(".exported*"))


def test_export_without_runs_says_what_to_do(tmp_path, capsys):
    with pytest.raises(SystemExit):
        export_main(["--log_root", str(tmp_path / "lightning_logs"), str(tmp_path / "out")])
    assert "run `python -m agnews.train fit` first" in capsys.readouterr().err


def pipeline_labels(folder, texts, cwd, trust_remote_code=False) -> subprocess.CompletedProcess:
    """A stock `pipeline` in a clean interpreter in another folder: nothing of agnews imported or importable."""
    script = (
        "import json, sys\n"
        "from transformers import pipeline\n"
        "pipe = pipeline('text-classification', model=sys.argv[1], trust_remote_code=sys.argv[3] == 'yes')\n"
        "texts = json.load(open(sys.argv[2]))\n"
        "print(json.dumps([r['label'] for r in pipe(texts, truncation=True, batch_size=64)]))\n"
    )
    inputs = cwd / "pipeline-texts.json"
    inputs.write_text(json.dumps(list(texts)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "HF_HOME": str(cwd / "hf-home")}
    args = [sys.executable, "-c", script, str(folder), str(inputs), "yes" if trust_remote_code else "no"]
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env)


def test_a_mean_pooled_model_exports_with_its_code(tiny_bert, data_dir, tmp_path, capsys):
    from agnews.train import cli_main

    cli_main(
        [
            "fit",
            *fit_args(tiny_bert, data_dir, tmp_path, "--model.pooling", "mean", "--trainer.max_epochs", "2"),
            "--data.batch_size",
            "8",
        ]
    )
    out = tmp_path / "out"
    export_main(["--log_root", str(tmp_path / "lightning_logs"), str(out)])
    assert "trust_remote_code=True" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "agnews-mean-pooled-bert" and (out / "pooling.py").is_file()
    texts = TEXTS + make_rows(10, seed=5)[0]
    result = pipeline_labels(out, texts, tmp_path, trust_remote_code=True)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = [
        # the pipeline runs fp32: so does the Classifier here (bf16 rounding can flip a near tie)
        p.label
        for p in Classifier.from_checkpoint("best", log_root=tmp_path / "lightning_logs", precision="32").predict(texts)
    ]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected
    # without trust_remote_code a stock loader refuses the folder, rather than run it as a first-token model
    refused = pipeline_labels(out, texts, tmp_path)
    assert refused.returncode != 0 and "trust_remote_code" in refused.stderr
