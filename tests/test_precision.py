import pytest

from agnews import precision
from agnews.inference.classifier import check_precision
from agnews.precision import CPU, choose

ZEN4_FLAGS = "fpu sse2 avx2 avx512f avx512bw avx512vl avx512_vnni avx512_bf16"
SKYLAKE_FLAGS = "fpu sse2 avx2 avx512f avx512bw avx512dq avx512vl avx512_vnni"
ZEN3_FLAGS = "fpu sse2 fma avx avx2"


def write_cpuinfo(tmp_path, model: str, flags: str):
    path = tmp_path / "cpuinfo"
    block = f"processor\t: 0\nmodel name\t: {model}\nflags\t\t: {flags}\n\n"
    path.write_text(block + block.replace(": 0", ": 1"))
    return path


@pytest.mark.parametrize(
    "model, flags, native, why",
    [
        ("AMD EPYC 9R14", ZEN4_FLAGS, True, "avx512_bf16"),
        (
            "Intel(R) Xeon(R) Platinum 8488C",
            SKYLAKE_FLAGS + " avx512_bf16 amx_bf16 amx_tile",
            True,
            "avx512_bf16/amx_bf16",
        ),
        ("Intel(R) Xeon(R) CPU @ 2.50GHz", SKYLAKE_FLAGS, False, "no avx512_bf16/amx_bf16"),
        ("AMD EPYC 7B13", ZEN3_FLAGS, False, "no avx512_bf16/amx_bf16"),
    ],
)
def test_native_bf16_read_from_the_cpu_flags(model, flags, native, why, tmp_path, monkeypatch):
    info = precision._read_cpuinfo(write_cpuinfo(tmp_path, model, flags))
    assert info.model == model and "avx2" in info.flags
    monkeypatch.setattr(precision, "cpu", lambda: info)
    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(precision, "_matmul_seconds", lambda dtype: pytest.fail("flags are enough, no probe"))
    assert precision.cpu_bf16.__wrapped__() == (native, why)


@pytest.mark.parametrize("speedup, native", [(4.0, True), (0.3, False)])
def test_without_readable_flags_a_matmul_probe_decides(speedup, native, monkeypatch):
    monkeypatch.setattr(precision, "cpu", lambda: CPU("unknown", None))
    seconds = {"torch.float32": speedup, "torch.bfloat16": 1.0}
    monkeypatch.setattr(precision, "_matmul_seconds", lambda dtype: seconds[str(dtype)])
    found, why = precision.cpu_bf16.__wrapped__()
    assert found == native and "probe" in why


def test_unreadable_cpuinfo_gives_no_flags(tmp_path):
    assert precision._read_cpuinfo(tmp_path / "missing").flags is None


def fake_cpu(monkeypatch, native: bool, flags: str = SKYLAKE_FLAGS) -> None:
    monkeypatch.setattr(precision, "cpu", lambda: CPU("Test CPU", frozenset(flags.split())))
    monkeypatch.setattr(precision, "cpu_bf16", lambda: (native, "amx_bf16" if native else "no avx512_bf16/amx_bf16"))


@pytest.mark.parametrize("native", [True, False])
def test_auto_picks_bf16_only_where_native_and_says_why(native, monkeypatch, capsys):
    fake_cpu(monkeypatch, native)
    assert choose("auto", "cpu") == ("bf16-mixed" if native else "32-true")
    assert choose(None, "cpu") == ("bf16-mixed" if native else "32-true")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("agnews: precision auto -> ") and "CPU Test CPU" in err[0]
    assert check_precision("auto") == ("bf16" if native else "32")


def test_named_precision_is_kept_with_a_warning_only_where_bf16_is_emulated(monkeypatch, capsys):
    fake_cpu(monkeypatch, False)
    assert choose("bf16-mixed", "cpu") == "bf16-mixed"
    assert "warning: precision bf16-mixed on CPU Test CPU" in capsys.readouterr().err
    assert choose("32-true", "cpu") == "32-true" and check_precision("int8") == "int8"
    assert capsys.readouterr().err == ""
    assert check_precision("bf16") == "bf16"
    assert "about 3-4x slower than fp32" in capsys.readouterr().err
    fake_cpu(monkeypatch, True)
    assert choose("bf16-mixed", "cpu") == "bf16-mixed" and capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "flags, cost",
    [(SKYLAKE_FLAGS, "about 3-4x slower"), (ZEN3_FLAGS, "10x or more slower than fp32 (no AVX-512)"), (None, "slower")],
)
def test_the_emulation_warning_names_this_cpus_cost(flags, cost, monkeypatch, capsys):
    # bf16 emulated with AVX-512 costs 3-4x; on an AVX2-only CPU (AMD EPYC Zen 3) a training step took 18x
    monkeypatch.setattr(precision, "cpu", lambda: CPU("Test CPU", frozenset(flags.split()) if flags else None))
    monkeypatch.setattr(precision, "cpu_bf16", lambda: (False, "no avx512_bf16/amx_bf16"))
    assert choose("bf16-mixed", "cpu") == "bf16-mixed"
    assert cost in capsys.readouterr().err
    assert choose("auto", "cpu") == "32-true"
    assert f"bf16 would be emulated, {precision.emulation_cost()}" in capsys.readouterr().err


def test_gpus_keep_their_own_rule(monkeypatch, capsys):
    fake_cpu(monkeypatch, False)
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(precision.torch.cuda, "is_bf16_supported", lambda: True)
    assert choose("auto", "gpu") == "bf16-mixed"
    assert "(GPU)" in capsys.readouterr().err


AMX_FLAGS = SKYLAKE_FLAGS + " avx512_bf16 amx_bf16 amx_tile"


@pytest.mark.parametrize(
    "flags, native, run_precision, accelerator, batch",
    [
        (AMX_FLAGS, True, "auto", "cpu", 32),  # what `fit` runs on an AMX Xeon
        (AMX_FLAGS, True, None, "cpu", 32),
        (AMX_FLAGS, True, "bf16-mixed", "cpu", 32),
        (AMX_FLAGS, True, "32-true", "cpu", 16),  # fp32 named: no faster at 32
        (AMX_FLAGS, True, "auto", "gpu", 16),
        (ZEN4_FLAGS, True, "auto", "cpu", 16),  # native bf16 without AMX: no faster at 32
        (SKYLAKE_FLAGS, False, "auto", "cpu", 16),
        (ZEN3_FLAGS, False, "auto", "cpu", 16),
    ],
)
def test_the_training_batch_each_cpu_and_precision_resolve_to(
    flags, native, run_precision, accelerator, batch, monkeypatch
):
    fake_cpu(monkeypatch, native, flags)
    assert precision.train_batch_size(run_precision, accelerator) == batch


def test_the_learning_rate_follows_a_chosen_batch_by_its_square_root():
    assert precision.learning_rate_for(16, 1e-4) == 1e-4
    assert precision.learning_rate_for(32, 1e-4) == pytest.approx(1e-4 * 2**0.5)
    assert precision.learning_rate_for(64, 5e-5) == pytest.approx(1e-4)


@pytest.mark.parametrize(
    ("name", "multiple"),
    [("bf16-mixed", 8), ("bf16-true", 8), ("16-mixed", 8), ("bf16", 8), ("32-true", 1), ("32", 1), ("64-true", 1)],
)
def test_batches_are_padded_to_8_tokens_under_16_bit_precision(name, multiple):
    assert precision.pad_multiple(name) == multiple
