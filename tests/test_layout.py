"""The package's shape: small modules, and an inference API that does not load the training side."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_module_is_over_300_lines():
    long = {
        str(path.relative_to(ROOT)): n
        for path in sorted((ROOT / "agnews").rglob("*.py"))
        if (n := len(path.read_text().splitlines())) > 300
    }
    assert not long, f"split these by responsibility: {long}"


def test_the_inference_api_loads_neither_the_datamodule_nor_datasets():
    probe = "import sys, agnews.inference; print(sorted(m for m in ('datasets', 'agnews.data.datamodule') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
