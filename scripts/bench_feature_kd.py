"""The cost of each feature-distillation method over plain KD, `study bench --kd` style.

`study bench` times one loss (kd); this script times the student's training step of each
method of ``study/feature_losses.py`` beside KD and the student alone, through the real
trainer (``train_role``: the loop, as feature roles train), on random images of a
dataset's shape (``study.bench.synthetic_splits``), with an untrained teacher (a trained
one costs the same forward pass). The first epoch is warm-up; images/s are over the rest,
the best of ``--rounds`` rounds that run the variants in turn (the machine may be shared).

    OMP_NUM_THREADS=1 python scripts/bench_feature_kd.py --shape cifar100 \
        --teacher wrn:40:2 --student wrn:16:2 --n-train 256 --batch 64 --repeats 2

Prints a markdown table (images/s, cost over KD) for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from study.bench import synthetic_splits
from study.engine import init_model, to_device
from study.models import resolve_model_kwargs
from study.plan import Role
from study.protocol import TrainSection
from study.train import train_role

METHODS = {
    "fitnet": {"method": "fitnet", "weight": 100.0},
    "at": {"method": "at", "weight": 1000.0},
    "sp": {"method": "sp", "weight": 3000.0},
    "rkd": {"method": "rkd", "weight": 1.0},
}


def _arch(text: str) -> tuple[str, dict]:
    name, *rest = text.split(":")
    if name == "wrn":
        return name, {"depth": int(rest[0]), "widen_factor": int(rest[1])}
    if name == "small_cnn":
        return name, {"channels": [int(x) for x in rest]}
    return name, {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="cifar100")
    parser.add_argument("--teacher", default="wrn:40:2")
    parser.add_argument("--student", default="wrn:16:2")
    parser.add_argument("--n-train", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--rounds", type=int, default=3, help="variants run in turn this often; best kept"
    )
    args = parser.parse_args()

    from study.feature_losses import resolve_features
    from study.features import shapes_of

    device = torch.device("cpu")
    data = synthetic_splits(args.shape, args.n_train, device)
    recipe = TrainSection(
        epochs=1 + args.repeats,
        batch_size=args.batch,
        lr=0.01,
        schedule="constant",
        device="cpu",
        deterministic=True,
    )
    t_arch, t_kwargs = _arch(args.teacher)
    s_arch, s_kwargs = _arch(args.student)
    t_kwargs = resolve_model_kwargs(t_arch, t_kwargs)
    s_kwargs = resolve_model_kwargs(s_arch, s_kwargs)
    teacher_role = Role("teacher", "teacher", "teacher", 0, t_arch, t_kwargs, train=recipe)
    teacher = to_device(init_model(teacher_role, 0, data), device).eval()
    s_shapes, t_shapes = shapes_of(s_arch, s_kwargs, data), shapes_of(t_arch, t_kwargs, data)

    def student(name: str, loss: str, params: dict, features: dict | None) -> Role:
        if features is not None:
            features = resolve_features(features, s_shapes, t_shapes)
            features.update(teacher_arch=t_arch, teacher_kwargs=t_kwargs)
        return Role(
            f"{name}/gen1",
            "student",
            name,
            1,
            s_arch,
            s_kwargs,
            loss,
            params,
            train=recipe,
            teacher="teacher",
            features=features,
        )

    variants = [("ce (no teacher)", student("ce", "ce", {"label_smoothing": 0.0}, None))]
    variants.append(("kd", student("kd", "kd", {"temperature": 4.0, "alpha": 0.9}, None)))
    for name, features in METHODS.items():
        variants.append((name, student(name, "ce", {"label_smoothing": 0.0}, features)))

    best: dict[str, float] = {}
    for _ in range(args.rounds):  # in turn, so that a burst of load hits every variant alike
        for name, role in variants:
            stamps: list[float] = []
            teachers = None if name.startswith("ce") else {0: teacher}
            train_role(
                role,
                [0],
                data,
                teachers=teachers,
                device=device,
                on_epoch=lambda s, e, m, stamps=stamps: stamps.append(time.perf_counter()),
            )
            rate = args.repeats * args.n_train / (stamps[-1] - stamps[0])
            best[name] = max(best.get(name, 0.0), rate)
    rows = list(best.items())
    kd = dict(rows)["kd"]
    print(
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"load average {os.getloadavg()}, {args.shape} shape, teacher {args.teacher}, "
        f"student {args.student}, {args.n_train} images x {args.repeats} timed epochs, "
        f"batch {args.batch}, best of {args.rounds} rounds"
    )
    print("| method | images/s | cost over KD |")
    print("|---|---:|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:.1f} | {100 * (kd / rate - 1):+.0f}% |")


if __name__ == "__main__":
    main()
