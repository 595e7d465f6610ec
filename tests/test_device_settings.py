"""Process-wide GPU settings, testable on the CPU: the cached normalisation constants, the
cuBLAS workspace variable, TF32 off, and what the environment snapshot says about them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator

import pytest
import torch

from study.data import augment
from study.data.augment import normalize
from study.determinism import (
    check_cublas_workspace,
    configure_cuda_process,
    deterministic_mode,
    environment,
    tf32_enabled,
)
from study.errors import UserInputError

CUBLAS = "CUBLAS_WORKSPACE_CONFIG"


@pytest.fixture
def math_flags() -> Iterator[None]:
    """Put back the TF32 flags that configure_cuda_process changes, legacy switch first (it
    also rewrites the conv/rnn values), so no other test sees them changed."""
    legacy_cudnn = torch.backends.cudnn.allow_tf32
    conv = torch.backends.cudnn.conv.fp32_precision
    rnn = torch.backends.cudnn.rnn.fp32_precision
    matmul = torch.backends.cuda.matmul.fp32_precision
    yield
    torch.backends.cudnn.allow_tf32 = legacy_cudnn
    torch.backends.cudnn.conv.fp32_precision = conv
    torch.backends.cudnn.rnn.fp32_precision = rnn
    torch.backends.cuda.matmul.fp32_precision = matmul


def _normalize_uncached(x, mean, std):
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    return (x.float().div_(255.0) - m) / s


@pytest.mark.parametrize(
    ("shape", "mean", "std"),
    [
        ((5, 3, 8, 8), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        ((3, 7, 6), [0.1, 0.2, 0.3], [0.9, 0.8, 0.7]),
        ((4, 1, 8, 8), (0.1307,), (0.3081,)),
    ],
)
def test_normalize_is_bit_for_bit_the_uncached_formula(shape, mean, std):
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for _ in range(2):  # the first call fills the cache, the second reads it
        out = normalize(x, mean, std)
        assert out.dtype == torch.float32
        assert torch.equal(out, _normalize_uncached(x, mean, std))


def test_normalize_copies_mean_and_std_only_on_the_first_call(monkeypatch):
    augment._channel_stats.cache_clear()
    calls = []
    as_tensor = torch.as_tensor

    def counting(*args, **kwargs):
        calls.append(args)
        return as_tensor(*args, **kwargs)

    monkeypatch.setattr(torch, "as_tensor", counting)
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    mean, std = [0.25, 0.5, 0.75], [0.5, 0.5, 0.5]
    normalize(x, mean, std)
    assert len(calls) == 2
    normalize(x, mean, std)
    normalize(x[0], tuple(mean), tuple(std))  # a tuple and a list of the same values: one key
    assert len(calls) == 2
    first = augment._channel_stats((0.25, 0.5, 0.75), (0.5,) * 3, x.device, torch.float32)
    again = augment._channel_stats((0.25, 0.5, 0.75), (0.5,) * 3, x.device, torch.float32)
    assert first[0] is again[0] and first[1] is again[1]


def test_normalize_first_called_in_inference_mode_caches_ordinary_tensors():
    augment._channel_stats.cache_clear()
    x = torch.full((1, 2, 3, 3), 128, dtype=torch.uint8)
    with torch.inference_mode():
        normalize(x, (0.5, 0.5), (0.25, 0.25))
    m, s = augment._channel_stats((0.5, 0.5), (0.25, 0.25), x.device, torch.float32)
    assert not m.is_inference() and not s.is_inference()
    assert torch.equal(
        normalize(x, (0.5, 0.5), (0.25, 0.25)), _normalize_uncached(x, (0.5,) * 2, (0.25,) * 2)
    )


def test_configure_cuda_process_sets_the_cublas_workspace_when_unset(monkeypatch, math_flags):
    monkeypatch.delenv(CUBLAS, raising=False)
    configure_cuda_process()
    assert os.environ[CUBLAS] == ":4096:8"
    configure_cuda_process()  # idempotent
    assert os.environ[CUBLAS] == ":4096:8"


@pytest.mark.parametrize("value", [":16:8", ":0:0"])
def test_configure_cuda_process_keeps_the_users_cublas_workspace(monkeypatch, math_flags, value):
    monkeypatch.setenv(CUBLAS, value)
    configure_cuda_process()
    assert os.environ[CUBLAS] == value


def test_configure_cuda_process_turns_tf32_off_without_warnings(math_flags):
    torch.backends.cudnn.conv.fp32_precision = "tf32"  # PyTorch's default for convolutions
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        configure_cuda_process()
        configure_cuda_process()
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        # The legacy readers (cudnn.flags(), torch.export, inductor) agree and do not raise.
        assert torch.backends.cudnn.allow_tf32 is False
        assert torch.backends.cuda.matmul.allow_tf32 is False
        with torch.backends.cudnn.flags(enabled=True):
            pass
    assert caught == []
    assert tf32_enabled() == {"tf32_convolutions": False, "tf32_matmul": False}


def test_resolving_a_training_device_turns_tf32_off(math_flags):
    from study.train import resolve_device

    torch.backends.cudnn.conv.fp32_precision = "tf32"
    resolve_device("cpu")
    assert tf32_enabled() == {"tf32_convolutions": False, "tf32_matmul": False}


def test_tf32_enabled_reads_the_setting_in_force(math_flags):
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    assert tf32_enabled()["tf32_convolutions"] is True
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    assert tf32_enabled()["tf32_convolutions"] is False
    if torch.backends.cudnn.fp32_precision == torch.backends.fp32_precision == "none":
        torch.backends.cudnn.conv.fp32_precision = "none"  # inherits from "none" parents: fp32
        assert tf32_enabled()["tf32_convolutions"] is False


def test_environment_records_the_settings_a_training_runs_with(monkeypatch, math_flags):
    """A run's snapshot is taken before its training resolves its device: environment()
    applies the process settings first, so it records what the training then uses."""
    monkeypatch.delenv(CUBLAS, raising=False)
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    snapshot = environment()
    assert snapshot["tf32_convolutions"] is False
    assert snapshot["tf32_matmul"] is False
    assert snapshot["cublas_workspace_config"] == ":4096:8"


@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda", 1)])
def test_deterministic_mode_on_a_gpu_refuses_a_bad_cublas_workspace(monkeypatch, device):
    monkeypatch.setenv(CUBLAS, ":0:0")
    before = torch.are_deterministic_algorithms_enabled()
    with pytest.raises(UserInputError) as err:
        with deterministic_mode(True, device):
            pass
    message = str(err.value)
    assert "CUBLAS_WORKSPACE_CONFIG" in message and "':0:0'" in message
    assert "':4096:8'" in message and "':16:8'" in message
    assert torch.are_deterministic_algorithms_enabled() is before  # nothing was switched


def test_check_cublas_workspace_allows_the_deterministic_values_unset_and_the_cpu(monkeypatch):
    for value in (":4096:8", ":16:8"):
        monkeypatch.setenv(CUBLAS, value)
        check_cublas_workspace("cuda")
    monkeypatch.delenv(CUBLAS)
    check_cublas_workspace("cuda")
    monkeypatch.setenv(CUBLAS, ":0:0")
    check_cublas_workspace("cpu")
    check_cublas_workspace(torch.device("cpu"))
    with deterministic_mode(False, "cuda") as enabled:  # not deterministic: nothing to check
        assert enabled is False
    with deterministic_mode(None, "cuda") as enabled:  # the GPU default is off
        assert enabled is False


def test_deterministic_mode_still_sets_the_cublas_workspace_for_library_callers(monkeypatch):
    monkeypatch.delenv(CUBLAS, raising=False)
    with deterministic_mode(True, "cpu") as enabled:
        assert enabled is True
        assert os.environ[CUBLAS] == ":4096:8"


def _cli_env(extra: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != CUBLAS} | extra
    res = subprocess.run(
        [sys.executable, "-m", "study.cli", "env", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_study_env_shows_the_settings_a_training_runs_with():
    snapshot = _cli_env({})
    assert snapshot["tf32_convolutions"] is False
    assert snapshot["tf32_matmul"] is False
    assert snapshot["cublas_workspace_config"] == ":4096:8"
    assert _cli_env({CUBLAS: ":16:8"})["cublas_workspace_config"] == ":16:8"


def test_every_command_sets_the_cublas_workspace_before_it_runs(monkeypatch, tmp_path):
    """Before anything can touch CUDA (cuBLAS reads it once): here `study validate`, which
    trains nothing and never asks for the environment."""
    from typer.testing import CliRunner

    from study.cli import app
    from tests.conftest import TINY_PROTOCOL

    monkeypatch.delenv(CUBLAS, raising=False)
    (tmp_path / "p.toml").write_text(TINY_PROTOCOL)
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "p.toml")])
    assert result.exit_code == 0, result.output
    assert os.environ[CUBLAS] == ":4096:8"
    monkeypatch.setenv(CUBLAS, ":16:8")
    CliRunner().invoke(app, ["validate", str(tmp_path / "p.toml")])
    assert os.environ[CUBLAS] == ":16:8"  # the user's value is kept
