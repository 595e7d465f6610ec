"""Resume checkpoints across device types: the slot is shared, the random streams are not."""

from __future__ import annotations

import pytest
import torch

from study import engine as engine_module
from study import pack as pack_module
from study import train as train_module
from study.checkpoint import CheckpointSlot, device_type_of
from study.plan import expand
from study.protocol import parse_protocol
from study.train import train_role

CPU = torch.device("cpu")
SEEDS = {"loop": [0], "pack": [0, 1, 2]}  # one seed trains in the loop, several in a pack


@pytest.fixture(scope="module")
def role():
    """The digits teacher with dropout: its dropout stream is checkpointed too."""
    from tests.conftest import TINY_PROTOCOL

    teacher = "kwargs = { hidden = [32] }"
    text = TINY_PROTOCOL.replace(teacher, "kwargs = { hidden = [32], dropout = 0.5 }")
    text = text.replace("epochs = 2", "epochs = 3")
    return expand(parse_protocol(text)).role("teacher")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _Stop(Exception):
    pass


def _crash_after_epoch_2(seed, epoch, metrics):
    if epoch == 2:
        raise _Stop


def _interrupted(role, digits, tmp_path, seeds) -> dict[int, CheckpointSlot]:
    """Slots holding epochs 1 and 2 of a real training that stopped there."""
    slots = {s: CheckpointSlot(tmp_path / "slots" / str(s)) for s in seeds}
    with pytest.raises(_Stop):
        train_role(
            role, seeds, digits, device=CPU, on_epoch=_crash_after_epoch_2, checkpoints=slots
        )
    return slots


def _cuda_state(seed: int) -> torch.Tensor:
    """A CUDA (Philox) generator's state: seed and offset, 16 bytes."""
    return torch.tensor([seed, 0], dtype=torch.int64).view(torch.uint8)


def _rewrite(slot: CheckpointSlot, edit) -> None:
    """Rewrite the slot's checkpoints through ``edit`` (with valid checksums)."""
    for epoch in slot._epochs():
        state = torch.load(slot._path(epoch), weights_only=False)
        edit(state)
        slot.save(state)


def _as_if_from_cuda(state: dict, recorded: bool = True) -> None:
    """What the same epoch saved on a GPU holds: the training-device generators and the
    dropout stream are CUDA ones (16 bytes); before the device type was recorded, only the
    generators said so."""
    for name in ("augment", "loss"):
        state["generators"][name] = _cuda_state(7)
    state.pop("device_rng", None)
    if recorded:
        state["device_type"] = "cuda"
        state["device_rng"] = _cuda_state(11)
    else:
        state.pop("device_type")
        state["cuda_rng"] = [_cuda_state(11)]


def _as_before_device_type(state: dict) -> None:
    """A CPU checkpoint in the format written before the device type was recorded."""
    state.pop("device_type")
    state.pop("device_rng")
    state["cuda_rng"] = []


def _same_results(a, b) -> None:
    assert a.history == b.history and a.final == b.final
    assert a.state_dict.keys() == b.state_dict.keys()
    assert all(torch.equal(a.state_dict[n], b.state_dict[n]) for n in a.state_dict)


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "inferred"])
@pytest.mark.parametrize("path", sorted(SEEDS))
def test_a_cuda_checkpoint_is_not_resumed_on_the_cpu_the_training_starts_over(
    role, digits, tmp_path, path: str, recorded: bool
) -> None:
    seeds = SEEDS[path]
    fresh = train_role(role, seeds, digits, device=CPU)
    slots = _interrupted(role, digits, tmp_path, seeds)
    for slot in slots.values():
        _rewrite(slot, lambda st: _as_if_from_cuda(st, recorded))
        assert device_type_of(slot.load()) == "cuda"
    results = train_role(role, seeds, digits, device=CPU, checkpoints=slots)
    for seed, a, b in zip(seeds, fresh, results, strict=True):
        assert b.failure is None and b.resumed_from == 0
        _same_results(a, b)
        [note] = slots[seed].notes
        assert "from cuda and cannot resume on cpu" in note and "from epoch 1" in note
        # the slot now holds the new training's own checkpoints, not the stale ones
        saved = slots[seed].load()
        assert saved["epoch"] == role.train.epochs and device_type_of(saved) == "cpu"
        assert saved["device_type"] == "cpu" and saved["device_rng"] is None


def test_in_a_pack_only_the_seed_with_a_cuda_checkpoint_trains_from_epoch_1(
    role, digits, tmp_path
) -> None:
    seeds = SEEDS["pack"]
    fresh = train_role(role, seeds, digits, device=CPU)
    slots = _interrupted(role, digits, tmp_path, seeds)
    _rewrite(slots[1], _as_if_from_cuda)
    results = train_role(role, seeds, digits, device=CPU, checkpoints=slots)
    for a, b in zip(fresh, results, strict=True):
        _same_results(a, b)
    assert [r.resumed_from for r in results] == [2, 0, 2]  # the others resume as a pack
    assert "from cuda" in slots[1].notes[0]
    assert slots[0].notes == slots[2].notes == []


@pytest.mark.parametrize("path", sorted(SEEDS))
def test_a_cpu_checkpoint_without_a_device_type_still_resumes_bit_identically(
    role, digits, tmp_path, path: str
) -> None:
    seeds = SEEDS[path]
    fresh = train_role(role, seeds, digits, device=CPU)
    slots = _interrupted(role, digits, tmp_path, seeds)
    for slot in slots.values():
        _rewrite(slot, _as_before_device_type)
        assert device_type_of(slot.load()) == "cpu"
    results = train_role(role, seeds, digits, device=CPU, checkpoints=slots)
    for seed, a, b in zip(seeds, fresh, results, strict=True):
        assert b.resumed_from == 2 and slots[seed].notes == []
        _same_results(a, b)


@pytest.mark.parametrize("path", sorted(SEEDS))
def test_saving_on_the_cpu_never_asks_cuda_for_its_generators(
    role, digits, tmp_path, monkeypatch, path: str
) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a CPU training read a CUDA generator")

    for name in ("get_rng_state_all", "get_rng_state", "set_rng_state_all", "set_rng_state"):
        monkeypatch.setattr(torch.cuda, name, refuse)
    seeds = SEEDS[path]
    slots = {s: CheckpointSlot(tmp_path / str(s)) for s in seeds}
    results = train_role(role, seeds, digits, device=CPU, checkpoints=slots)
    assert all(r.failure is None for r in results)
    assert all(slots[s].load()["device_type"] == "cpu" for s in seeds)


def test_the_saved_gpu_generator_is_the_training_devices_also_in_old_checkpoints(
    monkeypatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    bare, first = torch.device("cuda"), torch.device("cuda:0")
    assert train_module.cuda_index(bare) == 1 and train_module.cuda_index(first) == 0
    states = [_cuda_state(s) for s in (10, 11)]
    new = {"device_rng": states[1]}
    old = {"cuda_rng": states}  # every visible GPU's, by index
    assert train_module.saved_device_rng(new, first) is states[1]
    assert train_module.saved_device_rng(old, bare) is states[1]
    assert train_module.saved_device_rng(old, first) is states[0]
    assert train_module.saved_device_rng({"cuda_rng": states[:1]}, bare) is None  # fewer GPUs
    # the dropout stream: its own key; in older checkpoints, the global generator's place
    dropout = _cuda_state(12)
    assert engine_module.saved_dropout_rng({**new, "dropout_rng": dropout}, bare) is dropout
    assert engine_module.saved_dropout_rng(old, bare) is states[1]
    cpu_state = torch.Generator().get_state()
    assert engine_module.saved_dropout_rng({"torch_rng": cpu_state}, CPU) is cpu_state


def test_free_gpu_memory_counts_what_the_caching_allocator_holds_unused(monkeypatch) -> None:
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 6 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 2 * gib)
    assert pack_module._free_memory(torch.device("cuda:0")) == 14 * gib


def test_auto_pack_size_on_a_gpu_leaves_room_for_the_training_set(
    role, digits, monkeypatch
) -> None:
    per_seed = 4 * pack_module.seed_step_cost(role, digits).bytes
    on_device = digits.train_x.nbytes + digits.train_y.nbytes
    monkeypatch.setattr(pack_module, "_free_memory", lambda device: on_device + 5 * per_seed)
    assert pack_module.auto_pack_size(role, 10, torch.device("cuda"), digits) == 5
