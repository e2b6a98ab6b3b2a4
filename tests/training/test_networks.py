"""EfficientNet-Lite bodies and their ImageNet initialisation from the ``pretrained`` channel."""

from __future__ import annotations

import pytest
import torch

from cxr import jobcode
from infra.packaging import pretrained_weights

networks = jobcode.load("networks")
train = jobcode.load("train")


def imagenet_layout(model) -> dict[str, torch.Tensor]:
    """A state dict as efficientnet_pytorch saves it: RGB stem, ImageNet classifier."""
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in model.body.state_dict().items()}
    state["_conv_stem.weight"] = torch.randn(32, 3, 3, 3)
    state["_fc.weight"], state["_fc.bias"] = torch.randn(1000, 1280), torch.randn(1000)
    return state


@pytest.mark.parametrize("variant", sorted(networks.EFFICIENTNET_LITE))
def test_each_lite_variant_takes_weights_in_its_own_layout(variant):
    model = networks.build(variant, 3)
    state = imagenet_layout(model)
    assert networks.load_pretrained(model, dict(state)) == []
    # An RGB network on a gray image copied to three channels is the summed stem on the gray image.
    assert torch.equal(model.body._conv_stem.weight, state["_conv_stem.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(model.body._blocks[-1]._project_conv.weight, state[f"_blocks.{len(model.body._blocks) - 1}"
                                                                          "._project_conv.weight"])
    assert model(torch.rand(2, 1, 64, 64)).shape == (2, 3)


def test_the_shipped_imagenet_weights_fit_lite0_and_are_refused_by_another_variant():
    state = torch.load(pretrained_weights(), map_location="cpu", weights_only=True)
    assert networks.load_pretrained(networks.build("efficientnet_lite0", 3), dict(state)) == []
    with pytest.raises(ValueError, match="does not fit this network"):
        networks.load_pretrained(networks.build("efficientnet_lite2", 3), dict(state))


def test_the_channel_file_named_after_the_network_is_chosen(tmp_path):
    for variant in ("efficientnet_lite0", "efficientnet_lite2"):
        torch.save({"marker": torch.tensor(int(variant[-1]))}, tmp_path / f"{variant.replace('_', '-')}-0123abcd.pth")
    state, name = train.pretrained_state(str(tmp_path), "efficientnet_lite2")
    assert name == "efficientnet-lite2-0123abcd.pth" and int(state["marker"]) == 2
    assert train.pretrained_state(str(tmp_path), "efficientnet_lite1")[1] == "efficientnet-lite0-0123abcd.pth"
    assert train.pretrained_state(str(tmp_path / "absent"), "efficientnet_lite0") == (None, None)


def test_the_pipeline_bundle_gives_each_network_its_own_weights(tmp_path):
    """The pipeline's channel is one zip of every installed network's weights."""
    from infra.packaging import pretrained_bundle

    bundle = pretrained_bundle(tmp_path / "cache")
    assert pretrained_bundle(tmp_path / "cache").read_bytes() == bundle.read_bytes()  # stable asset hash
    channel = tmp_path / "channel"
    channel.mkdir()
    (channel / bundle.name).symlink_to(bundle)
    for variant in ("efficientnet_lite0", "efficientnet_lite2"):
        state, name = train.pretrained_state(str(channel), variant)
        assert name.startswith(variant.replace("_", "-") + "-")
        assert networks.load_pretrained(networks.build(variant, 3), state) == []


def test_the_small_residual_network_keeps_a_spatial_map_at_28_px():
    """resnet's stride-4 stem leaves a 1x1 map at PneumoniaMNIST's 28 px; resnet_small keeps 7x7 (~0.7 M weights)."""
    x = torch.rand(2, 1, 28, 28)
    assert networks.build("resnet", 2).features(x).shape[-2:] == (1, 1)
    model = networks.build("resnet_small", 2)
    assert model.features(x).shape == (2, 128, 7, 7)
    assert 0.6e6 < sum(p.numel() for p in model.parameters()) < 0.8e6
    _, statistics = model.features_and_statistics(x)  # the out-of-distribution guard reads three stages
    assert statistics.shape == (2, 2 * (32 + 64 + 128))
    assert "resnet_small" in train.parse_args(["--train", "t", "--validation", "v",
                                               "--architecture", "resnet_small"]).architecture


def test_an_ensemble_answers_with_its_members_mean_logits():
    torch.manual_seed(0)
    model = networks.build("compact", 3, width=8, members=3).eval()
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(model(x), torch.stack([member(x) for member in model.members]).mean(dim=0))
    with pytest.raises(ValueError, match="at least two"):
        networks.Ensemble([networks.build("compact", 3, width=8)])
    with pytest.raises(ValueError, match="at least one"):
        networks.build("compact", 2, members=0)


def test_an_ensembles_class_maps_are_its_members_mean_maps_and_average_back_to_its_logits():
    torch.manual_seed(0)
    model = networks.build("compact", 2, width=8, members=2).eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        logits, cams, statistics = networks.Exported(model)(x)
        member_cams = torch.stack([networks.Exported(member)(x)[1] for member in model.members]).mean(dim=0)
        assert torch.allclose(logits, model(x), atol=1e-5)
        assert torch.allclose(cams, member_cams, atol=1e-5)
        assert torch.equal(statistics, model.members[0].features_and_statistics(x)[1])  # the guard reads one


def test_an_ensemble_of_no_networks_is_refused_at_the_command_line(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--train", "t", "--validation", "v", "--ensemble", "0"])
    assert "--ensemble must be at least 1" in capsys.readouterr().err
