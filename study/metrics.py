"""The metrics we report, from predicted probabilities: accuracy, NLL, ECE, agreement with
the teacher, and the final metrics of a trained model (or an ensemble).

Plain tensor functions with no model in sight, so that the loop, a seed pack and an
ensemble compute their final numbers one way.
"""

from __future__ import annotations

import torch
from torch import Tensor

from study.data import DataSplits


def expected_calibration_error(probs: Tensor, y: Tensor, n_bins: int = 15) -> float:
    """ECE with equal-width confidence bins (Guo et al. 2017), top-1 confidence."""
    conf, pred = probs.max(dim=1)
    correct = (pred == y).float()
    bins = torch.clamp((conf * n_bins).long(), max=n_bins - 1)
    ece = torch.zeros((), dtype=torch.float64, device=probs.device)
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            gap = (conf[mask].double().mean() - correct[mask].double().mean()).abs()
            ece += mask.double().mean() * gap
    return float(ece)


def evaluate_probs(probs: Tensor, y: Tensor, prefix: str, *, ece: bool = True) -> dict[str, float]:
    """Accuracy, negative log-likelihood and (unless ``ece`` is False) ECE of predictions.

    Per-epoch metrics skip the ECE: its 15-bin loop is most of an epoch's evaluation cost.
    """
    if len(y) == 0:
        return {}
    y = y.to(probs.device)
    nll = -torch.log(probs.gather(1, y[:, None]).clamp_min(1e-12)).mean()
    out = {
        f"{prefix}_acc": float((probs.argmax(1) == y).float().mean()),
        f"{prefix}_nll": float(nll),
    }
    if ece:
        out[f"{prefix}_ece"] = expected_calibration_error(probs, y)
    return out


def agreement_metrics(student: Tensor, teacher: Tensor) -> dict[str, float]:
    """Top-1 agreement and KL(teacher || student) (batchmean) between two predictions."""
    kl = (teacher * (teacher.clamp_min(1e-12).log() - student.clamp_min(1e-12).log())).sum(1)
    return {
        "teacher_agreement": float((student.argmax(1) == teacher.argmax(1)).float().mean()),
        "teacher_kl": float(kl.mean()),
    }


def final_metrics(
    val_probs: Tensor, test_probs: Tensor, data: DataSplits, teacher_test: Tensor | None
) -> dict[str, float]:
    """The final metrics of a model (or an ensemble) given its predictions."""
    out = evaluate_probs(test_probs, data.test_y, "test")
    val = evaluate_probs(val_probs, data.val_y, "val")
    out.update({k: v for k, v in val.items() if k != "val_ece"})
    if teacher_test is not None:
        out.update(agreement_metrics(test_probs, teacher_test))
    return out


def final_scores(
    val_probs: Tensor,
    test_probs: Tensor | None,
    data: DataSplits,
    teacher_val: Tensor | None,
    teacher_test: Tensor | None,
) -> dict[str, float]:
    """A trained seed's final metrics: ``final_metrics`` on validation and test (validation
    alone without ``test_probs``, as tuning trials train), and the top-1 agreement with its
    teacher on validation where it has one."""
    if test_probs is not None:
        out = final_metrics(val_probs, test_probs, data, teacher_test)
    else:
        out = dict(evaluate_probs(val_probs, data.val_y, "val"))
    if teacher_val is not None and len(data.val_y):
        out["val_teacher_agreement"] = agreement_metrics(val_probs, teacher_val)[
            "teacher_agreement"
        ]
    return out
