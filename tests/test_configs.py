import pytest
import yaml

from agnews import sources
from agnews.train import cli_main
from tests.conftest import ROOT

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert {"default.yaml", "offline.yaml"} <= {c.name for c in CONFIGS}


def test_offline_yaml_names_the_offline_default():
    # what the default run chooses without the hub, written out: its real-data run is the default's (test_real_data)
    named = yaml.safe_load((ROOT / "configs" / "offline.yaml").read_text())
    assert named["model"] == sources.OFFLINE_MODEL
    assert {key: str(ROOT / path) for key, path in named["data"].items()} == sources.OFFLINE_DATA


def printed_config(capsys, *args) -> dict:
    with pytest.raises(SystemExit):
        cli_main(["fit", *args, "--print_config"])
    return yaml.safe_load(capsys.readouterr().out)


def test_default_yaml_is_the_defaults_written_out(capsys, no_amx):
    # `fit` alone and `fit --config configs/default.yaml` run the same thing: the file cannot drift from the code
    plain = printed_config(capsys)
    written = printed_config(capsys, "--config", str(ROOT / "configs" / "default.yaml"))
    written.pop("config", None)
    assert written == plain


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.name != "default.yaml"], ids=lambda p: p.name)
def test_each_config_alone_overrides_only_what_it_names(config, capsys, no_amx):
    plain = printed_config(capsys)
    alone = printed_config(capsys, "--config", str(config))
    alone.pop("config", None)
    named = yaml.safe_load(config.read_text())
    for section, values in plain.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            if key in (named.get(section) or {}):
                assert alone[section].get(key) == named[section][key], (section, key)
            elif (section, key) == ("data", "teacher") and "dataset" in (named.get("data") or {}):
                # the offline default's teacher goes with its data: a config naming other data names its own
                assert alone["data"].get("teacher") is None, config.name
            elif (section, key) not in {("model", "chosen_by"), ("data", "tokenizer")}:
                # the fast path (frozen embeddings, no dropout, ...) is kept by every config
                assert alone[section][key] == value, (section, key)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_runs_one_batch(config, tiny_bert, data_dir, tiny_teacher, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = cli_main(
        [
            "fit",
            "--config",
            str(config),
            # the configs' own encoder and data need the hub or the real copy: swap in tiny ones, keep the rest
            "--model.backbone",
            str(tiny_bert),
            "--data.dataset",
            str(data_dir),
            *(["--data.teacher", str(tiny_teacher)] if "teacher:" in config.read_text() else []),
            "--data.max_length",
            "32",
            "--data.cache_dir",
            str(tmp_path / "cache"),
            "--trainer.fast_dev_run",
            "1",
        ]
    )
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    assert cli.model.hparams.freeze_embeddings and cli.model.hparams.dropout == 0.0
