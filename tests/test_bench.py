"""`study bench`: every variant measured, ratios computed, on the CPU in a second or two."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from study.bench import BenchConfig, format_report, run_bench, synthetic_splits
from study.cli import app
from study.errors import UserInputError

TINY = BenchConfig(
    arch="mlp",
    arch_kwargs={"hidden": [8], "dropout": 0.1},
    dataset_shape="digits",
    batch=8,
    steps=2,
    repeats=1,
    packs=(1, 3),
    device="cpu",
    kd=True,
)


def test_bench_measures_reference_harness_packs_and_kd_side_by_side() -> None:
    report = run_bench(TINY)
    names = [r.name for r in report.results]
    assert names == ["reference", "harness", "pack 3", "harness + kd", "pack 3 + kd"]
    paths = {r.name: r.path for r in report.results}
    assert paths["reference"] == "dataloader" and paths["harness"] == "loop"
    assert paths["pack 3"] == paths["pack 3 + kd"] == "fused"
    for r in report.results:
        assert r.images_per_s > 0 and r.steps == TINY.steps * TINY.repeats
        assert r.peak_memory_mb >= 0
    pack = next(r for r in report.results if r.name == "pack 3")
    ratios = report.ratios(pack)
    harness = next(r for r in report.results if r.name == "harness")
    assert ratios["vs_harness"] == pytest.approx(pack.images_per_s / harness.images_per_s)
    kd = report.ratios(next(r for r in report.results if r.name == "pack 3 + kd"))
    assert kd["kd_overhead"] is not None
    assert report.memory.startswith("peak RSS")
    lines = format_report(report)
    assert any(line.startswith("pack 3 + kd") for line in lines)
    assert "fp32 (harness and packs; reference: fp32)" in lines[0]  # what the ratios compare
    payload = json.loads(report.to_json())
    assert [row["name"] for row in payload["results"]] == names


def test_kd_variants_use_the_teacher_cache_unless_told_not_to(monkeypatch) -> None:
    from study import engine, train

    forwards = []
    real_forward = train.TeacherCache.__init__

    def spy(self, forward, table, **kwargs):
        real_forward(self, lambda x: forwards.append(len(x)) or forward(x), table, **kwargs)

    monkeypatch.setattr(train.TeacherCache, "__init__", spy)
    cached = run_bench(BenchConfig(**{**TINY.__dict__, "packs": (1,), "batch": 16}))
    assert cached.teacher_outputs.startswith("cached") and forwards  # the first-batch checks
    assert any(line.startswith("kd teacher outputs: cached") for line in format_report(cached))
    forwards.clear()
    uncached = run_bench(BenchConfig(**{**TINY.__dict__, "packs": (1,), "teacher_cache": False}))
    assert uncached.teacher_outputs.startswith("a forward pass") and not forwards
    assert engine.teacher_cache.on  # switched back on after the bench


def test_the_report_says_when_the_teacher_cache_switched_itself_off(monkeypatch) -> None:
    """A table that disagrees with a real forward pass (as one filled with other batch sizes
    may, e.g. on this CPU for steps of 8 images) is switched off at the first step: the
    report says what happened, not what was asked for."""
    from study import train

    real_init = train.TeacherCache.__init__

    def rounded_otherwise(self, forward, table, **kwargs):
        real_init(self, forward, table + 1e-6, **kwargs)

    config = BenchConfig(**{**TINY.__dict__, "batch": 16})
    assert run_bench(config).teacher_outputs.startswith("cached")
    monkeypatch.setattr(train.TeacherCache, "__init__", rounded_otherwise)
    report = run_bench(config)
    assert report.teacher_outputs.startswith("a forward pass of the teacher in every step:")
    assert "switched itself off" in report.teacher_outputs


def test_a_pack_of_an_unpackable_architecture_is_timed_as_the_loop(monkeypatch) -> None:
    from study import bench, pack

    for module in (bench, pack):
        monkeypatch.setattr(module, "packable", lambda role: False)
    config = BenchConfig(**{**TINY.__dict__, "packs": (2,), "kd": False})
    report = run_bench(config)
    assert [(r.name, r.path) for r in report.results] == [
        ("reference", "dataloader"),
        ("pack 2", "loop"),
    ]
    assert report.results[1].steps == config.steps * config.repeats


def test_synthetic_data_has_the_real_shapes() -> None:
    data = synthetic_splits("cifar100", 16, torch.device("cpu"))
    assert data.train_x.shape == (16, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.num_classes == 100 and data.augmentation == "crop_flip"


def test_bad_options_are_user_errors() -> None:
    with pytest.raises(UserInputError, match="dataset shape"):
        run_bench(BenchConfig(dataset_shape="imagenet"))
    runner = CliRunner()
    result = runner.invoke(app, ["bench", "--packs", "1,x"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["bench", "--arch-kwargs", "[1]"])
    assert result.exit_code == 2


def test_the_cli_prints_json() -> None:
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "--arch-kwargs",
            '{"hidden": [8]}',
            "--batch",
            "8",
            "--steps",
            "2",
            "--repeats",
            "1",
            "--packs",
            "1,2",
            "--device",
            "cpu",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert [row["name"] for row in payload["results"]] == ["reference", "harness", "pack 2"]
    assert payload["config"]["arch_kwargs"] == {"hidden": [8]}


@pytest.mark.parametrize("flag", [True, False])
def test_the_deterministic_option_reaches_the_harness_and_the_packs(flag, monkeypatch) -> None:
    from study import determinism, pack, train

    seen = []

    def recording(requested, device):
        seen.append(determinism.resolve_deterministic(requested, device))
        return determinism.deterministic_mode(requested, device)

    for module in (train, pack):
        monkeypatch.setattr(module, "deterministic_mode", recording)
    config = BenchConfig(**{**TINY.__dict__, "kd": False, "deterministic": flag})
    report = run_bench(config)
    assert report.deterministic is flag
    assert seen and set(seen) == {flag}  # the harness (loop) and the pack 3 trained so
    line = f"deterministic mode (harness and packs): {'on' if flag else 'off'}"
    assert line in format_report(report)


@pytest.mark.parametrize("flag", [True, False])
def test_the_channels_last_option_reaches_the_convnets_of_the_harness_and_packs(
    flag, monkeypatch
) -> None:
    from study import engine, pack, train

    formats = []
    real_to_device = train.to_device

    def recording(model, device):
        model = real_to_device(model, device)
        convs = [p for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1]  # 1: both
        formats.extend(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
        return model

    monkeypatch.setattr(train, "to_device", recording)
    monkeypatch.setattr(pack, "to_device", recording)
    config = BenchConfig(
        **{
            **TINY.__dict__,
            "arch": "small_cnn",
            "arch_kwargs": {"channels": [4, 8], "hidden": 8},
            "kd": False,
            "channels_last": flag,
        }
    )
    report = run_bench(config)
    assert formats and set(formats) == {flag}  # the loop and the pack alike
    layout = "channels-last (NHWC)" if flag else "NCHW"
    assert f"memory format (harness and packs): {layout}; reference: NCHW" in format_report(report)
    assert engine.channels_last.on  # switched back on after the bench
    mlp = run_bench(BenchConfig(**{**TINY.__dict__, "kd": False, "packs": (1,)}))
    assert mlp.memory_format == "" and not any("memory format" in s for s in format_report(mlp))


def test_diagnostics_cost_alternates_the_diagnostics_off_and_on_epoch_by_epoch(monkeypatch) -> None:
    from study import diagnostics
    from study.bench import _on, _pairs, diagnostics_cost, format_diagnostics_cost

    seen = []
    real = diagnostics.EpochDiagnostics.start
    update = diagnostics.EpochDiagnostics.update

    def spy(*args, **kwargs):
        timed = diagnostics.EpochDiagnostics.update is not update  # the timing wrapper
        seen.append((args[0], diagnostics.switch.on, timed))
        return real(*args, **kwargs)

    monkeypatch.setattr(diagnostics.EpochDiagnostics, "start", spy)
    costs = diagnostics_cost(TINY, losses=("kd", "dkpp"), rounds=4, pairs=3)
    assert [(c.loss, c.seeds) for c in costs] == [("kd", 1), ("kd", 3), ("dkpp", 1), ("dkpp", 3)]
    for c in costs:  # a pair of epochs each, 3 pairs a round, two rounds each
        assert len(c.off_s) == len(c.on_s) == len(c.off_cpu) == len(c.on_cpu) == 6
        assert len(c.inside_cpu) == len(c.timed_off_cpu) == 6
        assert min(c.off_s + c.on_s + c.off_cpu + c.on_cpu + c.timed_off_cpu) > 0
        assert min(c.inside_cpu) > 0 and max(c.inside_cpu) < max(c.on_cpu)
    # per training: the warm-up on, then pairs of epochs off-on, on-off, off-on; every
    # second training (of each loss and pack size) with the diagnostics' calls timed
    trainings = [seen[i : i + 7] for i in range(0, len(seen), 7)]
    assert len(trainings) == 2 * 2 * 4
    for i, one in enumerate(trainings):
        assert [on for _, on, _ in one] == [True, False, True, True, False, False, True]
        assert {timed for _, _, timed in one} == {i % 2 == 1}
    assert {loss for loss, _, _ in seen} == {"kd", "dkpp"}
    # each pair as (off, on), whichever came first
    tagged = [(float(i), float(_on(i)), 0.0) for i in range(8)]
    assert [(off[0], on[0]) for off, on in _pairs(tagged)] == [(0, 1), (3, 2), (4, 5), (7, 6)]
    lines = format_diagnostics_cost(costs)
    assert len(lines) == 4 and lines[0].startswith("kd, 1 seed(s): ")
    assert diagnostics.switch.on  # back on after the measurement
    with pytest.raises(UserInputError, match="pairs >= 1"):
        diagnostics_cost(TINY, pairs=0)
    with pytest.raises(UserInputError, match="rounds must be >= 2"):
        diagnostics_cost(TINY, rounds=1)


def test_the_bench_says_whether_the_kd_students_measured_their_diagnostics() -> None:
    off = run_bench(BenchConfig(**{**TINY.__dict__, "packs": (1,), "diagnostics": False}))
    assert "kd dark-knowledge diagnostics: off" in format_report(off)


def test_the_cli_times_the_diagnostics_off_and_on_and_can_switch_them_off() -> None:
    small = ["--arch-kwargs", '{"hidden": [8]}', "--batch", "8", "--steps", "2"]
    small += ["--repeats", "1", "--packs", "1", "--device", "cpu"]
    cost = CliRunner().invoke(app, ["bench", *small, "--diagnostics-cost"])
    assert cost.exit_code == 0, cost.output
    lines = [line for line in cost.output.splitlines() if "ms/step off" in line]
    assert [line.split(",")[0] for line in lines] == ["kd", "dkpp"]
    assert all("in the diagnostics' calls" in line for line in lines)
    # the control: both epochs of each pair off, nothing measured inside
    control = CliRunner().invoke(app, ["bench", *small, "--diagnostics-cost", "--control"])
    assert control.exit_code == 0, control.output
    lines = [line for line in control.output.splitlines() if "ms/step off" in line]
    assert len(lines) == 2 and all("calls 0.0 us/step: 0.0%" in line for line in lines)
    alone = CliRunner().invoke(app, ["bench", *small, "--control"])
    assert alone.exit_code == 2 and "--control goes with --diagnostics-cost" in alone.output
    off = CliRunner().invoke(app, ["bench", *small, "--kd", "--no-diagnostics", "--json"])
    assert off.exit_code == 0, off.output
    assert json.loads(off.output[off.output.index("{") :])["config"]["diagnostics"] is False
