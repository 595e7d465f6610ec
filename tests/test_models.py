"""The model registry: names, shapes, published sizes, user errors, seeding."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from study.errors import UserInputError
from study.models import create_model, model_names, resolve_model_kwargs, validate_model_kwargs

# The smallest sensible configuration of each family, so that building and running is fast.
TINY: dict[str, dict] = {
    "wrn": {"depth": 10, "widen_factor": 1},
    "resnet_cifar": {"depth": 8},
    "densenet_bc": {"depth": 16, "growth_rate": 4},
    "resnet18": {},
    "densenet121": {},
    "mobilenet_v2": {"width_mult": 0.25},
    "mlp": {"hidden": [32, 16]},
    "small_cnn": {"channels": [4, 8], "hidden": 8},
}
TORCHVISION = {"resnet18", "densenet121", "mobilenet_v2"}


def _small_case(name: str) -> tuple[int, int]:
    """(in_channels, image_size) of the digit-sized input each family must handle."""
    return (1, 28) if name in TORCHVISION else (1, 8)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _meta_model(name: str, **kwargs) -> nn.Module:
    """Build on the meta device: parameters have shapes but no storage, so counting is cheap."""
    with torch.device("meta"):
        return create_model(name, in_channels=3, num_classes=10, image_size=32, **kwargs)


def test_every_registered_model_has_a_tiny_configuration():
    assert model_names() == sorted(TINY)


@pytest.mark.parametrize("name", sorted(TINY))
def test_model_gives_logits_for_cifar_and_digit_inputs(name):
    torch.manual_seed(0)
    for in_channels, image_size in [(3, 32), _small_case(name)]:
        model = create_model(
            name, in_channels=in_channels, num_classes=7, image_size=image_size, **TINY[name]
        ).eval()
        with torch.no_grad():
            logits = model(torch.randn(2, in_channels, image_size, image_size))
        assert logits.shape == (2, 7)
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    ("name", "kwargs", "published"),
    [
        ("wrn", {"depth": 28, "widen_factor": 10}, 36.5e6),
        ("resnet_cifar", {"depth": 20}, 0.27e6),
        ("resnet_cifar", {"depth": 110}, 1.7e6),
        ("densenet_bc", {"depth": 100, "growth_rate": 12}, 0.8e6),
        ("resnet18", {}, 11.17e6),
        ("mobilenet_v2", {}, 2.24e6),
    ],
)
def test_parameter_count_matches_published_size(name, kwargs, published):
    count = _count(_meta_model(name, **kwargs))
    assert count == pytest.approx(published, rel=0.04)


def test_parameter_counts_are_exact_for_reference_configurations():
    # WRN-28-10 and DenseNet-BC-100-12 as in their papers; ResNet-20/110 are the option-A
    # counts (269,722 and 1,727,962) plus the 2,752 of the two option-B projections.
    assert _count(_meta_model("wrn", depth=28, widen_factor=10)) == 36_479_194
    assert _count(_meta_model("densenet_bc", depth=100, growth_rate=12)) == 769_162
    assert _count(_meta_model("resnet_cifar", depth=20)) == 269_722 + 2_752
    assert _count(_meta_model("resnet_cifar", depth=110)) == 1_727_962 + 2_752
    assert _count(_meta_model("resnet18")) == 11_173_962


def test_densenet_bc_builds_the_ban_depth_112_growth_33():
    model = _meta_model("densenet_bc", depth=112, growth_rate=33)
    assert model.head.in_features > 0


def test_torchvision_stems_follow_in_channels_and_keep_resolution():
    resnet = create_model("resnet18", in_channels=1, num_classes=10, image_size=28)
    assert resnet.conv1.in_channels == 1
    assert resnet.conv1.stride == (1, 1) and resnet.conv1.kernel_size == (3, 3)
    assert isinstance(resnet.maxpool, nn.Identity)
    mobilenet = create_model("mobilenet_v2", in_channels=1, num_classes=10, image_size=28)
    assert mobilenet.features[0][0].in_channels == 1
    assert mobilenet.features[0][0].stride == (1, 1)
    with torch.device("meta"):
        densenet = create_model("densenet121", in_channels=1, num_classes=10, image_size=28)
    assert densenet.features.conv0.in_channels == 1
    assert isinstance(densenet.features.pool0, nn.Identity)


def test_densenet121_refuses_images_below_8_pixels_by_name():
    with pytest.raises(UserInputError, match=r"image_size=7 .*>= 8") as caught:
        create_model("densenet121", in_channels=3, num_classes=10, image_size=7)
    assert caught.value.field == "image_size" and "densenet121" in caught.value.reason
    torch.manual_seed(0)
    model = create_model("densenet121", in_channels=1, num_classes=3, image_size=8).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 8, 8)).shape == (1, 3)


def test_mobilenet_v2_final_map_is_the_documented_2x2():
    from torchvision.models.feature_extraction import create_feature_extractor

    from study.models import torchvision_adapters

    model = create_model(
        "mobilenet_v2", in_channels=3, num_classes=10, image_size=32, width_mult=0.25
    )
    features = create_feature_extractor(model.eval(), {"features.18": "last"})
    with torch.no_grad():
        assert features(torch.randn(1, 3, 32, 32))["last"].shape[-2:] == (2, 2)
    assert "2x2 at 32x32" in torchvision_adapters.mobilenet_v2.__doc__
    assert "2x2 at 32x32" in " ".join(torchvision_adapters.__doc__.split())


def test_unknown_model_name_lists_the_allowed_names():
    with pytest.raises(UserInputError) as caught:
        validate_model_kwargs("wrn_28_10", {})
    message = str(caught.value)
    assert "'wrn_28_10'" in message
    assert all(name in message for name in model_names())
    assert caught.value.field is None
    with pytest.raises(UserInputError, match="unknown model"):
        create_model("nope", in_channels=3, num_classes=10, image_size=32)


def test_unknown_kwarg_is_named_with_the_accepted_ones():
    with pytest.raises(UserInputError) as caught:
        validate_model_kwargs("wrn", {"depth": 16, "width": 4})
    message = str(caught.value)
    assert "'width'" in message
    assert "depth, widen_factor, dropout" in message
    with pytest.raises(UserInputError, match="'width_mult'"):
        create_model("resnet18", in_channels=3, num_classes=10, image_size=32, width_mult=2)


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("wrn", {"depth": 27}, r"depth=27 .*6n\+4.*10, 16, 22, 28"),
        ("resnet_cifar", {"depth": 21}, r"depth=21 .*6n\+2.*20, 32"),
        ("densenet_bc", {"depth": 99}, r"depth=99 .*6n\+4"),
        ("wrn", {"dropout": -0.1}, r"dropout=-0.1 .*\[0, 1\)"),
        ("wrn", {"widen_factor": 0}, r"widen_factor=0 .*>= 1"),
        ("wrn", {"depth": True}, r"depth=True"),
        ("densenet_bc", {"reduction": 0}, r"reduction=0 .*\(0, 1\]"),
        ("mlp", {"hidden": [1200, "wide"]}, r"hidden=.*list of integers"),
        ("mlp", {"input_dropout": 1.0}, r"input_dropout=1.0"),
        ("small_cnn", {"channels": []}, r"channels=\[\] .*non-empty"),
        ("mobilenet_v2", {"width_mult": float("nan")}, r"width_mult=nan"),
    ],
)
def test_invalid_value_names_the_kwarg_and_what_is_allowed(name, kwargs, expected):
    with pytest.raises(UserInputError, match=expected) as caught:
        validate_model_kwargs(name, kwargs)
    assert f"model '{name}'" in str(caught.value)
    with pytest.raises(UserInputError, match=expected):
        create_model(name, in_channels=3, num_classes=10, image_size=32, **kwargs)


def test_invalid_shape_arguments_are_user_errors():
    with pytest.raises(UserInputError, match="num_classes=0"):
        create_model("mlp", in_channels=1, num_classes=0, image_size=8)


def test_validation_builds_nothing(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("validation must not build modules")

    monkeypatch.setattr(nn.Module, "__init__", refuse)
    for name in model_names():
        validate_model_kwargs(name, {})
    start = time.perf_counter()
    validate_model_kwargs("wrn", {"depth": 6 * 10**6 + 4, "widen_factor": 10**9})
    validate_model_kwargs("mlp", {"hidden": [10**12] * 3})
    assert time.perf_counter() - start < 0.1


def test_toml_lists_and_python_tuples_resolve_to_the_same_kwargs():
    assert resolve_model_kwargs("mlp", {"hidden": [1200, 1200]}) == resolve_model_kwargs("mlp", {})
    assert resolve_model_kwargs("wrn", {"dropout": 0}) == {
        "depth": 28,
        "widen_factor": 1,
        "dropout": 0.0,
    }
    assert isinstance(resolve_model_kwargs("wrn", {"dropout": 0})["dropout"], float)


@pytest.mark.parametrize("name", sorted(TINY))
def test_same_seed_gives_same_weights_and_other_seed_differs(name):
    def build(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        model = create_model(name, in_channels=3, num_classes=10, image_size=32, **TINY[name])
        return model.state_dict()

    first, again, other = build(1), build(1), build(2)
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert any(not torch.equal(first[key], other[key]) for key in first)


def test_mlp_dropout_acts_in_train_mode_only():
    torch.manual_seed(0)
    model = create_model(
        "mlp",
        in_channels=1,
        num_classes=10,
        image_size=8,
        hidden=[64],
        dropout=0.5,
        input_dropout=0.2,
    )
    x = torch.randn(4, 1, 8, 8)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_wrn_dropout_sits_inside_the_blocks():
    model = create_model("wrn", in_channels=3, num_classes=10, image_size=32, depth=10, dropout=0.3)
    rates = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    assert rates == [0.3, 0.3, 0.3]
