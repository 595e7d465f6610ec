"""The GPU path, on a GPU. Skipped where CUDA is not available (CI has none).

On a machine with one: ``python -m pytest tests/test_gpu.py tests/test_pack.py``
(docs/benchmarks.md; test_pack.py runs its fused-layer tests on the GPU too). Here: the
augmentation against the CPU reference on CUDA generators, a pack of one against the loop,
bf16 distillation, `study bench` and a whole study on the GPU.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from study.data import apply_augmentation, augment_batch, draw_augmentation
from study.engine import load_model
from study.pack import augment_pack, train_pack
from study.plan import expand
from study.protocol import parse_protocol
from study.train import train_role
from tests.test_data import _reference
from tests.test_pack import _close

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def plan():
    from tests.conftest import TINY_PROTOCOL

    text = TINY_PROTOCOL.replace('device = "cpu"', 'device = "cuda"')
    teacher = "kwargs = { hidden = [32] }"
    text = text.replace(teacher, "kwargs = { hidden = [32], dropout = 0.5 }")
    return expand(parse_protocol(text))


@pytest.mark.parametrize("kind", ["crop_flip", "crop", "flip"])
def test_gpu_augmentation_gives_the_cpu_references_crops_and_flips(kind: str) -> None:
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    g = torch.Generator(device=CUDA).manual_seed(5)
    draw = draw_augmentation(len(x), kind, g)
    assert draw.top.device.type == "cuda"
    got = apply_augmentation(x.to(CUDA), draw).cpu()
    want = _reference(x, draw.top.cpu(), draw.left.cpu(), draw.flip.cpu(), draw.pad, draw.crop)
    assert torch.equal(got, want)
    # a pack's seeds draw as the loop's augment_batch draws from the same CUDA states
    batches = torch.randint(0, 256, (3, 5, 3, 8, 8), dtype=torch.uint8, device=CUDA)
    gens = [torch.Generator(device=CUDA).manual_seed(s) for s in (1, 2, 3)]
    ref_gens = [torch.Generator(device=CUDA).manual_seed(s) for s in (1, 2, 3)]
    for _ in range(2):
        packed = augment_pack(batches, kind, gens)
        for j, ref in enumerate(ref_gens):
            assert torch.equal(packed[j], augment_batch(batches[j], kind, ref))


def test_a_pack_of_one_trains_like_the_plain_loop_on_cuda(plan, digits) -> None:
    role = plan.role("teacher")  # dropout 0.5: the loop draws a pack's masks (SeedDropout)
    [loop] = train_role(role, [0], digits, device=CUDA)
    [packed] = train_pack(role, [0], digits, device=CUDA)
    assert _close(packed.state_dict, loop.state_dict, atol=1e-4)
    assert packed.final["test_acc"] == pytest.approx(loop.final["test_acc"], abs=0.01)
    assert all(v.device.type == "cpu" for v in packed.state_dict.values())


def test_a_student_pack_distils_under_bf16_on_cuda(plan, digits) -> None:
    teacher_role = plan.role("teacher")
    trained = train_role(teacher_role, [0, 1], digits, device=CUDA)
    teachers = {r.seed: load_model(teacher_role, digits, r.state_dict, CUDA) for r in trained}
    base = plan.role("kd/gen1")
    role = dataclasses.replace(base, train=base.train.model_copy(update={"precision": "bf16"}))
    results = train_role(role, [0, 1], digits, teachers=teachers, device=CUDA)
    for r in results:
        assert r.failure is None
        # two epochs of the tiny protocol: well above chance (0.1), not yet good
        assert r.final["test_acc"] > 0.2 and r.final["teacher_agreement"] > 0.2


def test_bench_on_cuda_reports_peak_memory_for_every_variant() -> None:
    from study.bench import BenchConfig, run_bench

    config = BenchConfig(
        arch="wrn",
        arch_kwargs={"depth": 10},
        dataset_shape="cifar100",
        batch=16,
        steps=2,
        repeats=1,
        packs=(1, 2),
        device="cuda",
        kd=True,
        precision="bf16",
    )
    report = run_bench(config)
    assert report.device.startswith("cuda")
    assert report.memory == "torch.cuda.max_memory_allocated"
    assert report.memory_format == "channels-last (NHWC)"
    assert all(r.images_per_s > 0 and r.peak_memory_mb > 0 for r in report.results)


def test_a_whole_study_trains_on_cuda(tmp_path, tiny_protocol_text) -> None:
    from study.execute import run_study
    from study.track import Tracker

    protocol = parse_protocol(tiny_protocol_text.replace('device = "cpu"', 'device = "cuda"'))
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    summary = run_study(protocol, tracker)
    assert not summary.failed and not summary.skipped
    frame = tracker.runs_frame("tiny")
    assert (frame["status"] == "FINISHED").all() and len(frame) == summary.trained
    run = tracker.run_record(summary.runs["kd/gen1@0"]["run_id"])
    assert run["tags"]["device"].startswith("cuda")


@pytest.mark.parametrize("loss", ["kd", "dkpp", "cwtm", "mse_logits"])
def test_the_diagnostics_on_cuda_agree_with_the_cpus_and_are_the_same_alone_and_packed(
    loss,
) -> None:
    """On a GPU the diagnostics run as tensor operations (each seed reduced alone); they
    agree with the CPU's compiled loops to float rounding (DKPP's permuted share aside:
    its permutations come from CUDA generators there), and a seed's numbers are the same,
    bit for bit, alone and in a pack."""
    from study.diagnostics import EpochDiagnostics
    from tests.test_diagnostics import _epoch, _steps

    steps = {j: _steps(j, [64] * 40 + [37], 10) for j in range(3)}
    on_gpu = {j: [tuple(x.to(CUDA) for x in step) for step in one] for j, one in steps.items()}
    acc = EpochDiagnostics.start(loss, {"temperature": 4.0} if loss == "kd" else {}, CUDA)
    assert not acc.fused
    cpu = _epoch(loss, [0, 1, 2], steps)
    gpu = _epoch(loss, [0, 1, 2], on_gpu, device=CUDA)
    assert _epoch(loss, [1], on_gpu, device=CUDA)[0] == gpu[1]
    for a, b in zip(cpu, gpu, strict=True):
        assert a.keys() == b.keys()
        for key in set(a) - {"dk_grad_share_permuted"}:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (loss, key)
        assert all(0.0 <= v <= 5.0 for v in b.values())
