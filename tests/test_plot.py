import pytest
from torch.utils.tensorboard import SummaryWriter

from agnews.plot import main
from agnews.train import cli_main
from agnews.training.curves import read_run
from tests.test_train import tiny_args


def test_fit_draws_curves_and_plot_redraws_them(tiny_bert, data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        cli_main(["fit", *tiny_args(tiny_bert, data_dir, tmp_path), "--trainer.max_epochs", "2"])
    first, second = tmp_path / "lightning_logs" / "version_0", tmp_path / "lightning_logs" / "version_1"
    assert (first / "curves.png").stat().st_size > 10_000
    curves = read_run(first)
    assert [epoch for epoch, _ in curves["val_acc"]] == [1, 2]
    assert len(curves["train_loss_step"]) >= 4

    (second / "curves.png").unlink()
    main([])  # the latest run
    assert (second / "curves.png").is_file()
    main([str(first), str(second), "--out", str(tmp_path / "both.png")])
    assert (tmp_path / "both.png").stat().st_size > 10_000


def test_folder_without_event_files(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert "holds no TensorBoard event files" in capsys.readouterr().err


def test_run_without_a_finished_epoch(tmp_path, capsys):
    with SummaryWriter(tmp_path) as writer:
        writer.add_scalar("train_loss_step", 1.0, 0)
    with pytest.raises(SystemExit):
        main([str(tmp_path)])
    assert "has no finished epoch yet" in capsys.readouterr().err
