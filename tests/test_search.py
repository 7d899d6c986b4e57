import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from agnews.errors import AGNewsError
from agnews.search import duration, main
from agnews.train import cli_main
from agnews.training.budget import TimeBudget, plan
from agnews.tuning.results import flags_to_dict
from agnews.tuning.space import build_space
from agnews.tuning.study import TrialPruning, first_trial, resolved_settings
from tests.conftest import fit_args
from tests.test_precision import AMX_FLAGS, fake_cpu

PROJECT = Path(__file__).resolve().parents[1]


def test_pass_through_fit_flags_become_nested_settings():
    assert flags_to_dict(["--data.train_size", "2000", "--model.pooling=mean", "--trainer.max_epochs", "3"]) == {
        "data": {"train_size": 2000},
        "model": {"pooling": "mean"},
        "trainer": {"max_epochs": 3},
    }
    assert duration("00:01:30:00") == 5400 and duration("10:00") == 600


def _study(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{folder / 'study.db'}")


def test_every_trial_validates_as_often_whatever_its_epochs():
    # a budgeted fit validates at most once per planned epoch; a trial validates 5 times, as every other trial,
    # so that the pruner's k-th validation is at the same share of each trial's budget
    budget = TimeBudget()
    TrialPruning(trial=None).on_fit_start(SimpleNamespace(callbacks=[budget]), None)
    assert budget.per_epoch is False
    assert plan(120, 0.2, 2).validations == 5 and plan(120, 0.2, 2, steps_per_epoch=306).validations == 2


def test_trial_0_is_the_base_run_with_what_the_space_fixes(tiny_bert, data_dir, tmp_path, monkeypatch):
    # on an AMX CPU a null batch is 32 rows at the rate x sqrt(2); a space that fixes 16 rows makes trial 0 the
    # base run at 16 rows, whose typed batch keeps the configured rate
    fake_cpu(monkeypatch, True, AMX_FLAGS)
    base = fit_args(tiny_bert, data_dir, tmp_path, "--data.batch_size", "null", "--model.learning_rate", "1e-4")
    settings = resolved_settings(base)
    assert (settings["data"]["batch_size"], settings["model"]["learning_rate"]) == (32, pytest.approx(1e-4 * 2**0.5))
    trial = first_trial(base, build_space([str(tiny_bert)], {}), settings)
    assert (trial["batch_size"], trial["learning_rate"]) == (32, pytest.approx(1e-4 * 2**0.5))
    trial = first_trial(base, build_space([str(tiny_bert)], {"batch_size": 16}), settings)
    assert (trial["batch_size"], trial["learning_rate"]) == (16, 1e-4)


@pytest.mark.timing
def test_a_tiny_search_resumes_prunes_survives_ctrl_c_and_writes_a_loadable_best_yaml(
    tiny_bert, data_dir, tmp_path, capsys
):
    # the learning rate is searched down to 1e-9 (no learning at all); trial 0 is the base run's 1e-2, with which
    # the tiny first-token model learns within its 8 s (at 3e-3 and mean pooling it sometimes stayed at chance,
    # tying the 1e-9 trial, which then was not pruned)
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: {low: 1.0e-9, high: 1.0e-2}\nbatch_size: 16\npooling: cls\n")
    search = ["--name", "tiny", "--root", str(tmp_path), "--encoders", str(tiny_bert), "--space", str(space)]
    # 8 s, not 4: a budget gives validation at most a quarter of it, and on a loaded CPU a 4 s trial had room for
    # only 2 validations, too few to prune at the second and still finish after it
    search += ["--trial_time", "00:00:00:08", "--startup_trials", "1"]
    fit = ["--", *fit_args(tiny_bert, data_dir, tmp_path, "--model.learning_rate", "1e-2")]
    folder = tmp_path / "lightning_logs" / "search" / "tiny"

    assert main([*search, "--trials", "1", *fit]) == 0
    study = _study(folder)
    (base,) = study.trials
    assert base.state == TrialState.COMPLETE and base.params["learning_rate"] == 1e-2
    assert (folder / "trial_0" / "checkpoints").is_dir()  # each trial is an ordinary run folder

    # resumed by a second process: a settings proposal that cannot learn is queued first, and pruned
    study.enqueue_trial({"learning_rate": 1e-9})
    assert main([*search, "--trials", "3", *fit]) == 0
    study = _study(folder)
    assert [t.state for t in study.trials[:2]] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert study.trials[1].params["learning_rate"] == 1e-9 and len(study.trials) == 3
    pruned_at, full = len(study.trials[1].intermediate_values), len(study.trials[0].intermediate_values)
    assert 2 <= pruned_at < full  # never on its first validation (--warmup_validations 1), and before its end
    board = (folder / "leaderboard.md").read_text()
    assert "| 1 |" in board and "pruned" in board and board.split("\n\n")[1] in capsys.readouterr().out

    # Ctrl-C during a trial: exit 130, the finished trials kept, the interrupted settings queued for the next run
    process = subprocess.Popen(
        [sys.executable, "-m", "agnews.search", *search, "--trials", "5", *fit],
        cwd=PROJECT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # SIGINT at its default, as under a terminal: a test run started in the background (`cmd &` in a script)
        # hands its children SIGINT ignored; two such runs saw the search exit 0 after Ctrl-C
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    for line in process.stderr:
        if line.startswith("agnews: trial 3:"):
            break
    for line in process.stderr:
        if "agnews: budget" in line:  # training has started
            process.send_signal(signal.SIGINT)
            break
    rest = process.stderr.read()
    assert process.wait(timeout=60) == 130, rest[-2000:]
    assert "search interrupted" in rest
    study = _study(folder)
    states = [t.state for t in study.trials]
    assert states[:2] == [TrialState.COMPLETE, TrialState.PRUNED] and TrialState.RUNNING not in states
    (stopped,) = [t for t in study.trials if t.state == TrialState.FAIL]
    (queued,) = [t for t in study.trials if t.state == TrialState.WAITING]
    assert queued.user_attrs["retry_of"] == stopped.number and queued.system_attrs["fixed_params"] == stopped.params

    # the next run takes the interrupted settings first
    finished = len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)))
    assert main([*search, "--trials", str(finished + 1), *fit]) == 0
    study = _study(folder)
    assert study.trials[-1].params == stopped.params and study.trials[-1].state != TrialState.FAIL

    # best.yaml: the best trial's settings, taken by fit --config as they are
    best = max(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.value)
    written = yaml.safe_load((folder / "best.yaml").read_text())
    assert written["model"]["learning_rate"] == best.params["learning_rate"]
    assert written["data"]["dataset"] == str(data_dir) and written["trainer"]["max_time"] == "00:00:00:08"
    cli = cli_main(
        ["fit", "--config", str(folder / "best.yaml"), "--trainer.default_root_dir", str(tmp_path / "again")]
    )
    hp = cli.model.hparams
    assert (hp.learning_rate, hp.pooling, hp.backbone) == (best.params["learning_rate"], "cls", str(tiny_bert))
    assert cli.trainer.checkpoint_callback.best_model_score is not None


def test_a_search_with_bad_settings_stops_with_one_line(tiny_bert, data_dir, tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("dropout_rate: [0.1]\n")
    args = ["--name", "bad", "--root", str(tmp_path), "--encoders", str(tiny_bert), "--space", str(space)]
    assert main([*args, "--", *fit_args(tiny_bert, data_dir, tmp_path)]) == 2
    assert (
        "agnews: error: --space names 'dropout_rate'; the searchable settings are learning_rate"
        in capsys.readouterr().err
    )
    with pytest.raises(SystemExit) as stop:  # a fit flag the run refuses stops the search before any trial
        main(["--name", "bad2", "--root", str(tmp_path), "--", "--data.batch_sise", "8"])
    assert stop.value.code == 2
    assert not (tmp_path / "lightning_logs" / "search" / "bad2").exists()


def test_the_distillation_settings_are_searched_only_with_a_teacher():
    assert {"distill_weight", "distill_temperature"} <= set(build_space(["enc"], {}, teacher=True))
    assert not {"distill_weight", "distill_temperature"} & set(build_space(["enc"], {}, teacher=False))
    narrowed = build_space(["enc"], {"distill_temperature": {"low": 2, "high": 4}}, teacher=True)
    assert (narrowed["distill_temperature"][1].low, narrowed["distill_temperature"][1].high) == (2.0, 4.0)
    with pytest.raises(AGNewsError, match="the run has no teacher: add -- --data.teacher FILE"):
        build_space(["enc"], {"distill_weight": 0.5}, teacher=False)
