"""Architectures by name, built through one door::

    model = create_model("wrn", in_channels=3, num_classes=100, image_size=32,
                         depth=28, widen_factor=10)

Each family lives in its own module and registers small factories with
``@register_model(name)``; importing this package registers them all. Protocol validation
calls ``validate_model_kwargs`` (cheap, builds nothing); fingerprints record
``resolve_model_kwargs`` (defaults filled in, values normalised).
"""

from study.models import (  # noqa: F401  (imported for their registrations)
    cnn,
    densenet,
    mlp,
    resnet_cifar,
    torchvision_adapters,
    wrn,
)
from study.models.registry import (
    create_model,
    model_names,
    register_model,
    resolve_model_kwargs,
    validate_model_kwargs,
)

__all__ = [
    "create_model",
    "model_names",
    "register_model",
    "resolve_model_kwargs",
    "validate_model_kwargs",
]
