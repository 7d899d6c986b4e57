import pytest

from agnews.train import cli_main
from tests.conftest import ROOT

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert {"default.yaml", "offline.yaml"} <= {c.name for c in CONFIGS}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_runs_one_batch(config, tiny_bert, data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stacked = [] if config.name == "default.yaml" else ["--config", str(ROOT / "configs" / "default.yaml")]
    cli = cli_main(
        [
            "fit",
            *stacked,
            "--config",
            str(config),
            # the configs' own encoder and data need the hub or the real copy: swap in tiny ones, keep the rest
            "--model.backbone",
            str(tiny_bert),
            "--data.dataset",
            str(data_dir),
            "--data.max_length",
            "32",
            "--data.cache_dir",
            str(tmp_path / "cache"),
            "--trainer.fast_dev_run",
            "1",
        ]
    )
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
