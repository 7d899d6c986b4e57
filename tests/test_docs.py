"""The README a newcomer reads and the design page a maintainer reads, held to the code."""

import re

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_the_readme_is_short_and_has_what_a_newcomer_looks_for():
    assert len(README.splitlines()) <= 120
    for needed in (
        "make install",
        "make fit",
        "python -m agnews.train test",
        "tensorboard --logdir lightning_logs",
        "## What to expect",
        "--data.dataset my_data/",
        "--model.num_classes",
        "python -m agnews.train predict",
        "Classifier.from_checkpoint",
        "make test",
    ):
        assert needed in README, needed


def test_the_readmes_links_and_images_exist():
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    assert targets
    for target in targets:
        assert (ROOT / target).exists(), target


def test_the_design_page_names_every_module():
    design = (ROOT / "docs" / "design.md").read_text()
    for path in sorted((ROOT / "agnews").rglob("*.py")):
        if path.stem != "__init__":
            assert f"`{path.relative_to(ROOT)}`" in design, path.relative_to(ROOT)
