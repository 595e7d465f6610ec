"""Dark-knowledge diagnostics: each checked against an independent float64 computation on a
saved batch, training bit for bit the same with them on or off (loop and pack), per seed
in packs, and in MLflow and the report for every distillation run of a small study."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from study import diagnostics
from study.diagnostics import EpochDiagnostics
from study.engine import load_model, predict_probs
from study.losses import Watched, get_loss, resolve_loss_params
from study.plan import expand
from study.protocol import parse_protocol
from study.train import train_role
from tests.faults import installed

CPU = torch.device("cpu")
DISTILLING = {
    "kd": {"temperature": 4.0, "alpha": 0.9},
    "ban": {"temperature": 2.0},
    "ban_l": {"temperature": 1.0},
    "cwtm": {},
    "dkpp": {},
    "mse_logits": {"scale": 1.0},
}
EXTRA_ARMS = """
[[arms]]
name = "cwtm"
loss = "cwtm"

[[arms]]
name = "dkpp"
loss = "dkpp"

[[arms]]
name = "mse"
loss = "mse_logits"
"""


# --- an independent float64 computation ---------------------------------------------------


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _share(g: np.ndarray, top: np.ndarray) -> np.ndarray:
    """Per row: 1 - g[top]^2 / |g|^2, written the other way round from the code's."""
    total = (g**2).sum(axis=-1)
    on_top = np.take_along_axis(g, top[..., None], axis=-1)[..., 0] ** 2
    return np.where(total > 0, 1.0 - on_top / np.where(total > 0, total, 1.0), 0.0)


def reference(loss: str, params: dict, s: np.ndarray, t: np.ndarray, y: np.ndarray) -> dict:
    """Every diagnostic but the permuted share, for one seed's [N, C] batch, in float64."""
    temp = params.get("temperature", 1.0) if loss in ("kd", "ban", "ban_l") else 1.0
    p = _softmax(t / temp)
    top = t.argmax(axis=-1)
    g = s - t if loss == "mse_logits" else _softmax(s / temp) - p
    conf = p.max(axis=-1)
    out = {
        "dk_grad_share": _share(g, top).mean(),
        "teacher_conf": conf.mean(),
        "teacher_entropy": -(p * np.log(p)).sum(axis=-1).mean(),
        "teacher_correct": (top == y).mean(),
    }
    if loss == "cwtm":
        w = conf / conf.sum()
        out["cwtm_weight_cv"] = w.std() / w.mean()
    return out


def _saved_batch(path: Path, k: int | None, ties: bool = True) -> dict[str, np.ndarray]:
    """A batch of logits (a spread of teacher confidences; with ``ties``, a row of exact
    argmax ties) and labels, written to an .npz file and read back: the test's input is the
    file."""
    g = torch.Generator().manual_seed(7)
    shape = (48, 10) if k is None else (k, 48, 10)
    scale = torch.linspace(0.2, 6.0, shape[-2])[:, None]
    t = torch.randn(shape, generator=g) * scale
    if ties:
        t[..., 0, :] = 0.0  # a tie everywhere: the argmax is the first class
    s = torch.randn(shape, generator=g) * 2.0
    y = torch.randint(0, 10, shape[:-1], generator=g)
    np.savez(path, student=s.numpy(), teacher=t.numpy(), targets=y.numpy())
    with np.load(path) as f:
        return {key: f[key] for key in f.files}


def _autograd_share(loss: str, params: dict, s, t, y, generator) -> np.ndarray:
    """The per-sample dark share of the registry loss's own gradient with respect to the
    student's logits (its soft-target term alone: KD with alpha = 1; at T = 1 for cwtm and
    dkpp's unpermuted share, the BAN loss; the share does not depend on the gradient's
    scale)."""
    s = s.clone().requires_grad_(True)
    if loss == "kd":
        name, kwargs = "kd", {**params, "alpha": 1.0}
    elif loss in ("ban", "ban_l"):
        name, kwargs = "ban", {"temperature": params["temperature"]}
    elif loss == "mse_logits":
        name, kwargs = "mse_logits", params
    elif loss == "dkpp" and generator is not None:
        name, kwargs = "dkpp", {}
    else:
        name, kwargs = "ban", {"temperature": 1.0}
    get_loss(name)(s, y, t, generator=generator, **kwargs).sum().backward()
    grad = s.grad.double().numpy()
    return _share(grad, t.numpy().argmax(axis=-1))


@pytest.fixture(params=["kernel", "tensors"])
def path(request) -> str:
    """The diagnostics' two computations: the compiled kernel (the CPU's) and the tensor
    operations (a GPU's, run here on the CPU)."""
    return request.param


def _start(
    loss: str, params: dict, k: int, path: str, device: torch.device = CPU
) -> EpochDiagnostics:
    fused = path == "kernel" if device.type == "cpu" else None  # (a GPU: its own path)
    return EpochDiagnostics(loss, resolve_loss_params(loss, params), k, device, fused)


def _copies(generators: list[torch.Generator]) -> list[torch.Generator]:
    return [torch.Generator().set_state(g.get_state()) for g in generators]


@pytest.mark.parametrize("ties", [True, False])  # argmax ties take another path
@pytest.mark.parametrize("k", [None, 3])  # the loop's [N, C] and a pack's [K, N, C]
@pytest.mark.parametrize("loss", sorted(DISTILLING))
def test_each_diagnostic_matches_a_float64_computation_on_a_saved_batch(
    tmp_path, loss, k, ties, path
) -> None:
    batch = _saved_batch(tmp_path / "batch.npz", k, ties)
    params = DISTILLING[loss]
    s, t, y = (torch.from_numpy(batch[n]) for n in ("student", "teacher", "targets"))
    seeds = 1 if k is None else k
    gens = [torch.Generator().manual_seed(100 + j) for j in range(seeds)]
    before = [g.get_state() for g in gens]
    replay = _copies(gens)  # the loss's draws, replayed for the reference
    acc = _start(loss, params, seeds, path)
    handed = acc.update(s, t, y, generator=gens[0] if k is None else gens)
    # nothing drawn: the loss draws from its own streams as it would
    assert all(torch.equal(g.get_state(), b) for g, b in zip(gens, before, strict=True))
    if loss == "dkpp":  # watched: the loss leaves the targets it trains on
        assert isinstance(handed, Watched) and handed.stream is (gens[0] if k is None else gens)
        get_loss("dkpp")(s, y, t, generator=handed)
        assert handed.targets is not None and handed.targets.shape == t.shape
    else:
        assert handed is (gens[0] if k is None else gens)

    per_seed = [slice(None)] if k is None else list(range(k))
    permuted = None
    if loss == "dkpp":  # the share of the gradient DKPP trains with, in this very step
        permuted = _autograd_share(loss, params, s, t, y, replay[0] if k is None else replay)
    for j, rows in enumerate(per_seed):
        sj, tj, yj = (batch[n][rows] for n in ("student", "teacher", "targets"))
        want = reference(loss, params, sj.astype(np.float64), tj.astype(np.float64), yj)
        if permuted is not None:
            want["dk_grad_share_permuted"] = permuted[rows].mean()
        got = acc.result(j)
        assert set(got) == set(want)
        for key, value in want.items():
            assert got[key] == pytest.approx(float(value), rel=1e-5, abs=1e-6), key
        # the formula is the loss's gradient: the registry's own autograd agrees
        grad_share = _autograd_share(
            loss, params, *(torch.from_numpy(x) for x in (sj, tj, yj)), None
        )
        assert want["dk_grad_share"] == pytest.approx(grad_share.mean(), rel=1e-5)


def test_a_sample_without_gradient_counts_as_no_dark_share(path) -> None:
    t = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    acc = _start("ban", {"temperature": 1.0}, 1, path)
    acc.update(t.clone(), t, torch.tensor([0, 0]))  # the student is its teacher: g = 0
    assert acc.result()["dk_grad_share"] == 0.0
    assert acc.result()["teacher_correct"] == 0.5


def test_the_cpu_computes_them_with_the_compiled_loops_and_only_the_cpu() -> None:
    assert EpochDiagnostics.start("kd", {}, CPU).fused
    assert not _start("kd", {}, 1, "tensors").fused
    with pytest.raises(ValueError, match="compiled loops run on the CPU, not meta"):
        EpochDiagnostics("kd", resolve_loss_params("kd", {}), 1, torch.device("meta"), True)


@pytest.mark.parametrize("loss", ["kd", "dkpp", "cwtm", "mse_logits"])
def test_an_empty_step_changes_nothing(loss, path) -> None:
    full = _steps(4, [64, 37], 10)
    empty = (torch.zeros(0, 10), torch.zeros(0, 10), torch.zeros(0, dtype=torch.long))
    want = _epoch(loss, [4], {4: full}, path=path)[0]
    assert _epoch(loss, [4], {4: [empty, full[0], empty, full[1], empty]}, path=path)[0] == want


def _steps(seed: int, sizes: list[int], classes: int) -> list[tuple[torch.Tensor, ...]]:
    """One seed's steps of random logits (batches of ``sizes``) and labels."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        scale = torch.rand(n, 1, generator=g) * 8.0
        t = torch.randn(n, classes, generator=g) * scale
        s = torch.randn(n, classes, generator=g) * 3.0
        out.append((s, t, torch.randint(0, classes, (n,), generator=g)))
    return out


def _epoch(
    loss: str,
    seeds: list[int],
    steps: dict,
    rows: list[int] | None = None,
    path: str = "kernel",
    device: torch.device = CPU,
) -> list[dict]:
    """Each of ``seeds``'s diagnostics from one accumulator fed their steps side by side (a
    pack of len(seeds), or of ``k`` rows of which ``rows`` are left), or alone (the loop);
    the steps' tensors and the loss's generators on ``device``."""
    params, n = DISTILLING[loss], len(steps[seeds[0]])
    gens = {j: torch.Generator(device=device).manual_seed(1000 + j) for j in seeds}
    loop = rows is None and len(seeds) == 1
    k = len(seeds) if rows is None else max(rows) + 1
    acc = _start(loss, params, k, path, device)
    index = None if rows is None else torch.tensor(rows, device=device)
    for i in range(n):
        s, t, y = (torch.stack([steps[j][i][part] for j in seeds]) for part in range(3))
        if loop:
            s, t, y = s[0], t[0], y[0]
        stream = gens[seeds[0]] if loop else [gens[j] for j in seeds]
        handed = acc.update(s, t, y, generator=stream, rows=index)
        get_loss(loss)(s, y, t, generator=handed, **params)
    positions = range(len(seeds)) if rows is None else rows
    return [acc.result(p) for p in positions]


@pytest.fixture(params=[1, 3], ids=["1-thread", "3-threads"])
def threads(request):
    """torch's intra-op threads: 3 splits the larger tensors among threads at places that
    are no multiple of a vector's width (this machine has 2 cores; CI too)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("loss", ["kd", "dkpp", "cwtm", "mse_logits"])
@pytest.mark.parametrize("classes", [10, 100])
def test_a_seed_gets_the_same_diagnostics_bit_for_bit_alone_and_in_any_pack(
    loss, classes, threads, path
) -> None:
    """The same seed's steps alone (the loop), in packs of 2, 3 and 16 at other places, and
    left in a pack whose other seeds diverged: the same numbers to the last bit. Sample
    counts that are not multiples of the vector width (a partial last batch), a buffer
    that spans several reductions, and tensors large enough for torch to split them among
    threads."""
    sizes = [64] * 40 + [37]  # 2,597 samples: a reduction at 2,048, another at the end
    steps = {j: _steps(j, sizes, classes) for j in range(16)}
    alone = _epoch(loss, [5], steps, path=path)[0]
    assert set(alone) == set(diagnostics.COMMON + diagnostics.EXTRA.get(loss, ()))
    for seeds in ([5, 1], [2, 5, 9], list(range(16))):
        got = _epoch(loss, seeds, steps, path=path)
        assert got[seeds.index(5)] == alone, (loss, len(seeds))
        other = _epoch(loss, [seeds[0]], steps, path=path)[0]
        assert got[0] == other
    # seeds 0, 2 and 4 of a pack of six left; seed 5 takes the third row
    assert _epoch(loss, [1, 3, 5], steps, rows=[0, 2, 4], path=path)[2] == alone


def test_a_seed_whose_logits_blow_up_gets_nan_and_leaves_its_pack_mates_alone(path) -> None:
    """Seed 1's student logits turn infinite and NaN in one step, and huge but finite ones
    come from seed 0's teacher: seed 1's epoch values are NaN, seed 0's are its own, bit
    for bit, and finite."""
    steps = {j: _steps(j, [64] * 5, 10) for j in range(2)}
    s, t, y = steps[0][2]
    steps[0][2] = (s, t * 1e30, y)  # a teacher sure of itself beyond float32's exp
    s, t, y = steps[1][3]
    s = s.clone()
    s[0, 0], s[1] = math.inf, math.nan
    steps[1][3] = (s, t, y)
    # (not mse_logits: its loss, (s - t)^2, overflows float32 with such a teacher too)
    for loss in ("kd", "dkpp", "cwtm"):
        alone = _epoch(loss, [0], steps, path=path)[0]
        assert all(math.isfinite(v) for v in alone.values()), loss
        first, second = _epoch(loss, [0, 1], steps, path=path)
        assert first == alone, loss
        assert all(math.isnan(v) for v in second.values()), loss


def test_dkpp_diagnostics_without_the_loss_having_run_say_so() -> None:
    acc = EpochDiagnostics.start("dkpp", {}, CPU)
    t = torch.randn(8, 5)
    acc.update(t + 1.0, t, torch.zeros(8, dtype=torch.long), generator=torch.Generator())
    with pytest.raises(RuntimeError, match="give the loss the generator that update"):
        acc.result()


def test_roles_that_do_not_distil_or_switched_off_log_nothing() -> None:
    assert EpochDiagnostics.start("ce", {}, CPU).result() == {}
    with diagnostics.switch(False):
        acc = EpochDiagnostics.start("kd", {}, CPU)
        acc.update(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
        assert acc.result() == {}
    assert diagnostics.switch.on


# --- in training ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plan():
    from tests.conftest import TINY_PROTOCOL

    return expand(parse_protocol(TINY_PROTOCOL + EXTRA_ARMS))


@pytest.fixture(scope="module")
def teachers(plan, digits):
    trained = train_role(plan.role("teacher"), [0, 1, 2], digits, device=CPU)
    return {r.seed: load_model(plan.role("teacher"), digits, r.state_dict, CPU) for r in trained}


def _without_diagnostics(history: list[dict]) -> list[dict]:
    return [
        {k: v for k, v in h.items() if k not in diagnostics.DIAGNOSTIC_METRICS} for h in history
    ]


@pytest.mark.parametrize("seeds", [[0], [0, 1]])  # the loop, and a pack
@pytest.mark.parametrize("student", ["kd/gen1", "dkpp/gen1"])
def test_training_is_bit_for_bit_the_same_with_diagnostics_on_or_off(
    plan, digits, teachers, student, seeds
) -> None:
    role = plan.role(student)
    on = train_role(role, seeds, digits, teachers=teachers, device=CPU)
    with diagnostics.switch(False):
        off = train_role(role, seeds, digits, teachers=teachers, device=CPU)
    for a, b in zip(on, off, strict=True):
        assert a.state_dict.keys() == b.state_dict.keys()
        assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
        assert a.final == b.final
        assert _without_diagnostics(a.history) == b.history
        assert all("dk_grad_share" in h for h in a.history)
        assert not any("dk_grad_share" in h for h in b.history)


def test_epoch_values_are_the_sample_means_of_the_steps_the_loop_saw(
    plan, digits, teachers, monkeypatch
) -> None:
    """Every step's tensors saved as the loop passes them; the epoch's metrics recomputed
    from them in float64; the teacher's side also from the teacher alone (no augmentation:
    an epoch sees each training image once)."""
    saved: list[tuple[np.ndarray, ...]] = []
    real = EpochDiagnostics.update

    def saving(self, student, teacher, targets, **kwargs):
        saved.append(tuple(x.detach().double().numpy().copy() for x in (student, teacher, targets)))
        return real(self, student, teacher, targets, **kwargs)

    monkeypatch.setattr(EpochDiagnostics, "update", saving)
    role = plan.role("kd/gen1")
    [result] = train_role(role, [0], digits, teachers=teachers, device=CPU)
    steps = len(saved) // role.train.epochs
    for epoch, h in enumerate(result.history):
        batches = saved[epoch * steps : (epoch + 1) * steps]
        s, t, y = (np.concatenate([b[i] for b in batches]) for i in range(3))
        want = reference("kd", role.loss_params, s, t, y.astype(np.int64))
        for key, value in want.items():
            assert h[key] == pytest.approx(float(value), rel=1e-5, abs=1e-6), (epoch, key)
    probs = predict_probs(teachers[0], digits.train_x, digits, batch_size=512).double().numpy()
    temp = role.loss_params["temperature"]
    soft = _softmax(np.log(probs) / temp)  # softmax(t / T) from softmax(t)
    for h in result.history:
        assert h["teacher_correct"] == pytest.approx(
            (probs.argmax(1) == digits.train_y.numpy()).mean()
        )
        assert h["teacher_conf"] == pytest.approx(soft.max(1).mean(), rel=1e-5)


def test_a_pack_gives_each_seed_its_own_diagnostics_also_when_a_seed_diverged(
    plan, digits, teachers
) -> None:
    role = plan.role("dkpp/gen1")
    [alone] = train_role(role, [0], digits, teachers=teachers, device=CPU)
    healthy = train_role(role, [0, 2], digits, teachers=teachers, device=CPU)
    with installed(diverge_seeds=[1]):
        mixed = train_role(role, [0, 1], digits, teachers=teachers, device=CPU)
    assert mixed[1].failure is not None
    # an MLP seed trains bit for bit alike in every pack of two or more, and its
    # diagnostics, also once the diverged seed has left the pack (the epochs after the
    # first are reduced on other shapes), are bit for bit the same too
    assert mixed[0].history == healthy[0].history
    assert all("dk_grad_share_permuted" in h for h in mixed[0].history)
    assert healthy[0].history != healthy[1].history
    # and like the loop's to float rounding
    for a, b in zip(healthy[0].history, alone.history, strict=True):
        for key in (*diagnostics.COMMON, "dk_grad_share_permuted"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key


# --- a small study, end to end --------------------------------------------------------------


@pytest.fixture(scope="module")
def small_study(tmp_path_factory) -> Path:
    """The default study cut down (4 seeds, 2 epochs, BAN with 2 generations) with a logit
    matching arm, run by `study run` in a subprocess against a real MLflow store."""
    text = (Path(__file__).parents[1] / "protocols" / "ban_digits.toml").read_text()
    text = text.split("[tune]")[0]
    text = text.replace("seeds = 20", "seeds = 4").replace("epochs = 12", "epochs = 2")
    text = text.replace("generations = 3", "generations = 2")
    text = text.replace("[analysis]", '[[arms]]\nname = "mse"\nloss = "mse_logits"\n\n[analysis]')
    cwd = tmp_path_factory.mktemp("signal")
    (cwd / "small.toml").write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run(
        [sys.executable, "-m", "study.cli", "run", "small.toml"],
        cwd=cwd,
        env={**env, "MLFLOW_DISABLE_TELEMETRY": "true", "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return cwd


def test_every_distillation_run_logs_the_diagnostics_every_epoch(small_study) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{small_study / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ban_digits")
    runs = [
        r
        for r in client.search_runs([exp.experiment_id], max_results=1000)
        if "role" in r.data.tags
    ]
    extra = {"dkpp": "dk_grad_share_permuted", "cwtm": "cwtm_weight_cv"}
    distilled = 0
    for r in runs:
        loss = r.data.params.get("loss")
        keys = set(r.data.metrics)
        if loss in diagnostics.GRADIENT:
            distilled += 1
            want = {*diagnostics.COMMON, *([extra[loss]] if loss in extra else [])}
            assert want <= keys, (r.data.tags["role"], want - keys)
            assert not ({"dk_grad_share_permuted", "cwtm_weight_cv"} - want) & keys
            for key in want:
                history = client.get_metric_history(r.info.run_id, key)
                assert sorted(m.step for m in history) == [1, 2]
                assert all(
                    0.0 <= m.value <= (np.log(10) if "entropy" in key else 5.0) for m in history
                )
        else:
            assert not set(diagnostics.DIAGNOSTIC_METRICS) & keys, r.data.tags["role"]
    # ban/gen1, ban/gen2, kd, cwtm, dkpp, mse: 6 distilling roles x 4 seeds
    assert distilled == 6 * 4


def test_the_report_says_where_the_signal_comes_from(small_study) -> None:
    report = (small_study / "reports" / "ban_digits" / "report.md").read_text()
    section = report.split("## Where the signal comes from")[1].split("## Power and seeds")[0]
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("| ") and "/gen" in line
    }
    for role in ("ban/gen1", "ban/gen2", "kd/gen1", "cwtm/gen1", "dkpp/gen1", "mse/gen1"):
        assert role in rows, role
    # mean [low, high] of dk_grad_share for each role, with a Spearman row per role
    assert all(any(c.count("[") == 1 and "," in c for c in cells) for cells in rows.values())
    assert "not a cause" in section and "Spearman" in section
    assert "figures/dark_knowledge.png" in section
    assert (
        (small_study / "reports" / "ban_digits" / "figures" / "dark_knowledge.png").stat().st_size
    )
    html = (small_study / "reports" / "ban_digits" / "report.html").read_text()
    assert "<h2>Where the signal comes from</h2>" in html


@pytest.mark.parametrize("sizes", [[64, 64, 64], [64, 37]], ids=["whole-vectors", "padded"])
@pytest.mark.parametrize("loss", ["kd", "dkpp", "cwtm", "mse_logits"])
def test_bf16_logits_are_measured_in_float32(loss, sizes, path) -> None:
    """Logits of a bf16 step (autocast) give the diagnostics of their exact float32 values,
    whether or not the steps need padding (a bf16 reduction would round every operation
    to 8 bits)."""
    steps = {j: _steps(j, sizes, 10) for j in range(3)}
    half = {j: [(s.bfloat16(), t.bfloat16(), y) for s, t, y in one] for j, one in steps.items()}
    exact = {j: [(s.float(), t.float(), y) for s, t, y in one] for j, one in half.items()}
    for seeds in ([1], [0, 1, 2]):
        got, want = _epoch(loss, seeds, half, path=path), _epoch(loss, seeds, exact, path=path)
        assert got == want, (loss, sizes, seeds)
        assert all(math.isfinite(v) for d in got for v in d.values())


_IN_ANOTHER_PROCESS = """
import json, warnings
import torch
warnings.simplefilter("always")
from study.diagnostics import EpochDiagnostics
g = torch.Generator().manual_seed(3)
s, t = torch.randn(2, 64, 10, generator=g), torch.randn(2, 64, 10, generator=g) * 3
acc = EpochDiagnostics.start("kd", {"temperature": 4.0}, torch.device("cpu"), 2)
acc.update(s, t, torch.randint(0, 10, (2, 64), generator=g))
print(json.dumps([acc.result(0), acc.result(1)]))
"""


@pytest.mark.skipif(
    not hasattr(numba.config, "CACHE_LOCATOR_CLASSES"),
    reason="this Numba cannot be told where it may cache (NUMBA_CACHE_LOCATOR_CLASSES)",
)
def test_the_compiled_loops_run_where_numba_cannot_cache_them() -> None:
    """Numba finds no writable place for its cache (here: the only place it may use is a
    folder that cannot be made, as for a read-only install without a home): the
    diagnostics compute the same numbers, and a warning says that their loops are
    compiled in each process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    nowhere = {
        "NUMBA_CACHE_DIR": "/proc/study-no-cache",
        "NUMBA_CACHE_LOCATOR_CLASSES": "UserProvidedCacheLocator",
    }
    runs = [
        subprocess.run(
            [sys.executable, "-c", _IN_ANOTHER_PROCESS],
            env=extra,
            capture_output=True,
            text=True,
            timeout=300,
        )
        for extra in ({**env, **nowhere}, env)
    ]
    assert all(run.returncode == 0 for run in runs), [run.stderr for run in runs]
    uncached, cached = runs
    assert "Numba cannot cache the diagnostics' loops" in uncached.stderr
    assert "cannot cache" not in cached.stderr
    assert uncached.stdout == cached.stdout
    assert len(json.loads(uncached.stdout)[1]) == 4


def test_a_cache_file_that_cannot_be_read_is_compiled_anew_and_repaired(tmp_path) -> None:
    """Numba's cache files of the loops overwritten with garbage (as by another tool, or
    cut short): the diagnostics still give the same numbers, with a warning, and the next
    process finds the cache repaired."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    env["NUMBA_CACHE_DIR"] = str(tmp_path)

    def run() -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-c", _IN_ANOTHER_PROCESS],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        return proc

    first = run()
    files = [f for f in tmp_path.rglob("*") if f.suffix in (".nbi", ".nbc")]
    assert {f.suffix for f in files} == {".nbi", ".nbc"}
    for f in files:
        f.write_bytes(b"not a pickle")
    broken = run()
    assert "could not be read from Numba's cache" in broken.stderr
    repaired = run()
    assert "Numba" not in repaired.stderr
    assert first.stdout == broken.stdout == repaired.stdout
