"""Plan expansion, seed pairing along the chain, and fingerprints."""

from __future__ import annotations

import pytest

from study.plan import derive_seed, expand
from study.protocol import parse_protocol

DATA = "data-identity-1"


def _fps(text: str, data: str = DATA) -> dict:
    return expand(parse_protocol(text)).fingerprints(data)


def test_roles_in_dependency_order_with_ensembles(tiny_protocol_text: str) -> None:
    plan = expand(parse_protocol(tiny_protocol_text))
    keys = [r.key for r in plan.roles]
    assert keys == ["teacher", "ban/gen1", "ban/gen2", "ban/ens2", "kd/gen1"]
    assert plan.role("ban/gen1").teacher == "teacher"
    assert plan.role("ban/gen2").teacher == "ban/gen1"
    assert plan.role("ban/ens2").members == ("ban/gen1", "ban/gen2")
    assert plan.role("kd/gen1").arch_kwargs["hidden"] == (16,)
    assert plan.n_runs == 5 * 3
    assert plan.n_epochs == 4 * 2 * 3  # four trained roles, 2 epochs, 3 seeds
    for r in plan.roles:  # every dependency comes earlier
        for d in plan.dependencies(r.key):
            assert keys.index(d) < keys.index(r.key)


def test_chain_pairs_seed_s_with_seed_s_of_previous_generation(tiny_protocol_text: str) -> None:
    plan = expand(parse_protocol(tiny_protocol_text))
    fps = plan.fingerprints(DATA)
    # gen2 of seed s is fingerprinted with gen1 of seed s as its teacher, and no other seed
    from study.plan import fingerprint

    role = plan.role("ban/gen2")
    for s in plan.seeds:
        expected = fingerprint(role, s, [fps[("ban/gen1", s)]], DATA)
        assert fps[("ban/gen2", s)] == expected
        for other in plan.seeds:
            if other != s:
                assert fps[("ban/gen2", s)] != fingerprint(
                    role, s, [fps[("ban/gen1", other)]], DATA
                )


def test_fingerprints_distinct_per_role_and_seed(tiny_protocol_text: str) -> None:
    fps = _fps(tiny_protocol_text)
    assert len(set(fps.values())) == len(fps)


RESULT_CHANGES = [
    ("epochs = 2", "epochs = 3"),
    ("batch_size = 128", "batch_size = 64"),
    ("lr = 0.05", "lr = 0.04"),
    ("nesterov = true", "nesterov = false"),
    ('schedule = "cosine"', 'schedule = "constant"'),
    ("kwargs = { hidden = [32] }", "kwargs = { hidden = [33] }"),
    ("temperature = 4.0", "temperature = 3.0"),
    ("alpha = 0.9", "alpha = 0.8"),
    ('loss = "ban"', 'loss = "ban_l"'),
    ("seeds = 3", "seeds = [0, 1, 5]"),
    ("[train]", "[train]\nweight_decay = 0.0"),
    ("[train]", '[train]\nprecision = "bf16"'),
    ('augmentation = "none"', 'augmentation = "flip"'),
]


@pytest.mark.parametrize("old,new", RESULT_CHANGES, ids=[c[1] for c in RESULT_CHANGES])
def test_fingerprint_changes_with_result_determining_fields(
    tiny_protocol_text: str, old: str, new: str
) -> None:
    before = _fps(tiny_protocol_text)
    after = _fps(tiny_protocol_text.replace(old, new, 1))
    changed = {k for k in before if k in after and before[k] != after[k]}
    assert changed or set(before) != set(after)
    if "augmentation" in new:  # every trained role sees the batches, and so the ensembles
        assert changed == set(before)


def test_teacher_change_propagates_down_the_chain(tiny_protocol_text: str) -> None:
    before = _fps(tiny_protocol_text)
    teacher = "kwargs = { hidden = [32] }"
    after = _fps(tiny_protocol_text.replace(teacher, "kwargs = { hidden = [32], dropout = 0.1 }"))
    # the teacher changed; every role of the ban chain (same arch as teacher) and kd changed
    assert all(before[k] != after[k] for k in before)


def test_fingerprint_changes_with_data_identity(tiny_protocol_text: str) -> None:
    a, b = _fps(tiny_protocol_text, "data-a"), _fps(tiny_protocol_text, "data-b")
    assert all(a[k] != b[k] for k in a)


def test_loss_change_in_one_arm_leaves_other_arms_alone(tiny_protocol_text: str) -> None:
    before = _fps(tiny_protocol_text)
    after = _fps(tiny_protocol_text.replace("alpha = 0.9", "alpha = 0.5"))
    assert before[("kd/gen1", 0)] != after[("kd/gen1", 0)]
    assert all(before[k] == after[k] for k in before if not k[0].startswith("kd/"))


NEUTRAL_CHANGES = [
    ('name = "tiny"', 'name = "renamed"'),
    ("[study]", '[study]\ndescription = "words"'),
    ('device = "cpu"', 'device = "auto"'),
    ("[[arms]]", '[analysis]\nalpha = 0.01\ncorrection = "bh"\n\n[[arms]]'),
    ("kwargs = { hidden = [16] }", "kwargs = { hidden = [16], dropout = 0.0 }"),  # a default
    ("temperature = 4.0", "temperature = 4"),  # same value, other TOML type
    ('augmentation = "none"', 'augmentation = "default"'),  # the digits' default is none
]


@pytest.mark.parametrize("old,new", NEUTRAL_CHANGES, ids=[c[1][:30] for c in NEUTRAL_CHANGES])
def test_fingerprint_ignores_fields_that_do_not_change_results(
    tiny_protocol_text: str, old: str, new: str
) -> None:
    assert _fps(tiny_protocol_text) == _fps(tiny_protocol_text.replace(old, new, 1))


def test_renaming_an_arm_keeps_its_fingerprints(tiny_protocol_text: str) -> None:
    before = _fps(tiny_protocol_text)
    after = _fps(tiny_protocol_text.replace('name = "kd"\n', 'name = "hinton"\n'))
    assert before[("kd/gen1", 2)] == after[("hinton/gen1", 2)]


def test_random_streams_differ_per_seed_generation_and_stream() -> None:
    values = {derive_seed(s, g, n) for s in range(5) for g in range(4) for n in ("init", "order")}
    assert len(values) == 5 * 4 * 2
    assert derive_seed(3, 1, "init") == derive_seed(3, 1, "init")
