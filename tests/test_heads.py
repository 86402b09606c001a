"""Subtype heads and the multi-task wrapper, on a tiny real nnU-Net PlainConvUNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from scipy.ndimage import binary_dilation, binary_erosion
from torch import nn

from pancreas_mtl.layout import DEFAULT_NUM_SUBTYPES as NUM_SUBTYPES
from pancreas_mtl.training.heads import (
    AttentionFusionHead,
    LesionPoolingHead,
    MultiTaskUNet,
    RunningStandardizer,
    add_evidence,
    region_weights,
    resize_weights,
    scale_gradient,
    stage_channels,
    weighted_moments,
)

SHAPE = (8, 16, 16)
FEATURES = [4, 8, 16]


def make_unet(num_classes: int = 3, deep_supervision: bool = False, seed: int = 0) -> PlainConvUNet:
    torch.manual_seed(seed)
    return PlainConvUNet(
        input_channels=1,
        n_stages=3,
        features_per_stage=FEATURES,
        conv_op=nn.Conv3d,
        kernel_sizes=3,
        strides=[1, 2, 2],
        n_conv_per_stage=2,
        num_classes=num_classes,
        n_conv_per_stage_decoder=[2, 2],
        conv_bias=True,
        norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=deep_supervision,
    )


def make_multitask(num_classes: int = 3, deep_supervision: bool = False, head_cls=LesionPoolingHead):
    unet = make_unet(num_classes, deep_supervision)
    head = head_cls(stage_channels(unet, 1))
    return MultiTaskUNet(unet, head, num_classes).eval()


def image(batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, 1, *SHAPE), generator=g)


def masks(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Pancreas block with a lesion inside, two voxels clear of the mid-planes of every axis."""
    whole = torch.zeros((batch, 1, *SHAPE))
    lesion = torch.zeros((batch, 1, *SHAPE))
    whole[:, :, 0:4, 2:7, 1:7] = 1
    lesion[:, :, 1:3, 3:6, 2:5] = 1
    return whole, lesion


def test_stage_channels_lists_input_then_encoder_stages():
    assert stage_channels(make_unet(), 1) == [1, 4, 8, 16]
    assert stage_channels(make_unet(), 2) == [2, 4, 8, 16]


def test_weighted_moments_matches_hand_sums():
    features = torch.tensor([[[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]]])  # (B=1, C=2, n=3)
    weights = torch.tensor([[[1.0, 0.0, 1.0], [0.5, 0.5, 0.0]]])  # (B=1, R=2, n=3)
    s1, s2, total = weighted_moments(features, weights)
    assert s1.shape == (1, 2, 2) and s2.shape == (1, 2, 2) and total.shape == (1, 2, 1)
    torch.testing.assert_close(s1[0], torch.tensor([[4.0, 40.0], [1.5, 15.0]]))
    torch.testing.assert_close(s2[0], torch.tensor([[10.0, 1000.0], [2.5, 250.0]]))
    torch.testing.assert_close(total[0, :, 0], torch.tensor([2.0, 1.0]))
    _, second_only, _ = weighted_moments(features, weights, [1])
    torch.testing.assert_close(second_only, s2[:, 1:])


def test_region_weights_lesion_core_rim_and_parenchyma():
    whole, lesion = masks(1)
    weights = region_weights(whole, lesion)
    assert weights.shape == (1, 4, *SHAPE)
    les = lesion[0, 0].numpy().astype(bool)
    cube = np.ones((3, 3, 3))
    rim = binary_dilation(les, structure=cube) & ~les
    core = binary_erosion(les, structure=cube, border_value=1)
    np.testing.assert_array_equal(weights[0, 0].numpy(), les)
    np.testing.assert_array_equal(weights[0, 1].numpy(), core)
    np.testing.assert_array_equal(weights[0, 2].numpy(), rim)
    np.testing.assert_array_equal(weights[0, 3].numpy(), whole[0, 0].numpy().astype(bool) & ~les)


def test_resize_weights_averages_down_and_keeps_matching_size():
    w = torch.zeros((1, 1, 2, 2, 2))
    w[0, 0, 0, 0, 0] = 1.0
    assert resize_weights(w, (2, 2, 2)) is w
    torch.testing.assert_close(resize_weights(w, (1, 1, 1)), torch.full((1, 1, 1, 1, 1), 1 / 8))


def test_add_evidence_sums_and_starts_from_a_copy():
    b = {"sum": torch.tensor([1.0, 2.0]), "weight": torch.tensor([3.0])}
    first = add_evidence(None, b)
    first["sum"] += 100
    torch.testing.assert_close(b["sum"], torch.tensor([1.0, 2.0]))
    both = add_evidence({"sum": torch.tensor([1.0, 1.0]), "weight": torch.tensor([1.0])}, b)
    torch.testing.assert_close(both["sum"], torch.tensor([2.0, 3.0]))
    torch.testing.assert_close(both["weight"], torch.tensor([4.0]))


def test_lesion_pooling_shapes():
    net = make_multitask()
    x = image()
    whole, lesion = masks()
    seg, evidence = net.forward_multitask(x, whole, lesion)
    assert seg.shape == (2, 3, *SHAPE)
    width = 1 + 4 + 8  # stages -1 (input), 0 and 1
    assert evidence["sum"].shape == (2, 4, width)
    assert evidence["sum_sq"].shape == (2, 3, width)  # spread of lesion, core and parenchyma
    assert evidence["weight"].shape == (2, 4, 3)
    assert net.head.describe(evidence).shape == (2, 11 * width)
    assert net.head.classify(evidence).shape == (2, NUM_SUBTYPES)


def test_lesion_statistics_of_the_input_stage_match_numpy():
    net = make_multitask()
    x = image()
    # a lesion thick enough to keep a core after a one-voxel erosion
    whole = torch.zeros((2, 1, *SHAPE))
    lesion = torch.zeros((2, 1, *SHAPE))
    whole[:, :, 0:8, 2:14, 1:14] = 1
    lesion[:, :, 1:6, 4:10, 3:9] = 1
    with torch.no_grad():
        _, evidence = net.forward_multitask(x, whole, lesion)
        descriptor = net.head.describe(evidence)
    width = 1 + 4 + 8
    xs = x[:, 0].numpy()
    les = lesion[0, 0].numpy().astype(bool)
    rim = binary_dilation(les, structure=np.ones((3, 3, 3))) & ~les
    core = binary_erosion(les, structure=np.ones((3, 3, 3)), border_value=1)
    par = whole[0, 0].numpy().astype(bool) & ~les
    for b in range(2):
        lesion_mean = xs[b][les].mean()
        # exact from the evidence; the descriptor's eps shifts it by about eps / voxels
        torch.testing.assert_close(
            evidence["sum"][b, 0, 0] / evidence["weight"][b, 0, 0],
            torch.tensor(lesion_mean, dtype=torch.float32),
        )
        assert evidence["weight"][b, 0, 0].item() == les.sum()
        np.testing.assert_allclose(descriptor[b, 0].item(), lesion_mean, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(descriptor[b, width].item(), xs[b][les].std(), rtol=1e-2, atol=1e-3)
        np.testing.assert_allclose(descriptor[b, 2 * width].item(), xs[b][core].mean(), rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(descriptor[b, 3 * width].item(), xs[b][core].std(), rtol=1e-2, atol=1e-3)
        np.testing.assert_allclose(descriptor[b, 4 * width].item(), xs[b][rim].mean(), rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(descriptor[b, 5 * width].item(), xs[b][par].mean(), rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(
            descriptor[b, 6 * width].item(), lesion_mean - xs[b][par].mean(), rtol=1e-3, atol=1e-4
        )
        np.testing.assert_allclose(descriptor[b, 9 * width].item(), xs[b][par].std(), rtol=1e-2, atol=1e-3)
        np.testing.assert_allclose(
            descriptor[b, 10 * width].item(), xs[b][les].std() - xs[b][par].std(), rtol=1e-2, atol=1e-3
        )


def test_empty_lesion_gives_zero_weight_and_a_finite_descriptor():
    net = make_multitask()
    x = image()
    whole, lesion = masks()
    lesion[0] = 0  # case 0 has no lesion, case 1 keeps its own
    with torch.no_grad():
        _, evidence = net.forward_multitask(x, whole, lesion)
        descriptor = net.head.describe(evidence)
        logits = net.head.classify(evidence)
    assert torch.all(evidence["weight"][0, 0] == 0)  # lesion, every stage
    assert torch.all(evidence["weight"][0, 1] == 0)  # no lesion, no rim
    assert torch.all(evidence["sum"][0, 0] == 0)
    assert torch.isfinite(descriptor).all()
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(net.head.lesion_voxels(evidence), torch.tensor([0.0, float(lesion[1].sum())]))


def test_empty_lesion_descriptor_has_finite_gradient():
    head = LesionPoolingHead([1, 4, 8, 16], stages=(-1,))
    x = image().requires_grad_(True)
    whole, _ = masks()
    evidence = head.pool(x, [], whole, torch.zeros_like(whole))
    head.describe(evidence).sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("axis,cut", [(2, 4), (3, 8), (4, 8)])
def test_evidence_of_two_halves_adds_up_to_the_whole_volume(axis, cut):
    head = LesionPoolingHead([1, 4, 8, 16], stages=(-1,))
    x = image()
    whole, lesion = masks()
    voxel_weight = torch.rand((1, 1, *SHAPE), generator=torch.Generator().manual_seed(3)) + 0.5

    def part(t, lo, hi):
        index = [slice(None)] * t.ndim
        index[axis] = slice(lo, hi)
        return t[tuple(index)]

    full = head.pool(x, [], whole, lesion, voxel_weight)
    halves = None
    for lo, hi in ((0, cut), (cut, x.shape[axis])):
        ev = head.pool(part(x, lo, hi), [], part(whole, lo, hi), part(lesion, lo, hi), part(voxel_weight, lo, hi))
        halves = add_evidence(halves, ev)
    assert set(halves) == set(full)
    for key in full:
        torch.testing.assert_close(halves[key], full[key], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(head.describe(halves), head.describe(full), rtol=1e-5, atol=1e-5)


def test_attention_fusion_shapes_and_lesion_voxels():
    torch.manual_seed(0)
    net = make_multitask(head_cls=AttentionFusionHead)
    assert net.head.stages == (0, 1, 2)
    x = image()
    whole, lesion = masks()
    lesion[1] = 0
    with torch.no_grad():
        _, evidence = net.forward_multitask(x, whole, lesion)
        logits = net.head.classify(evidence)
    assert evidence["sum"].shape == (2, sum(FEATURES))
    assert evidence["weight"].shape == (2, 1 + 3)
    torch.testing.assert_close(net.head.lesion_voxels(evidence), torch.tensor([float(lesion[0].sum()), 0.0]))
    assert logits.shape == (2, NUM_SUBTYPES) and torch.isfinite(logits).all()
    with torch.no_grad():
        _, weighted = net.forward_multitask(x, whole, lesion, torch.ones((1, 1, *SHAPE)))
    for key in evidence:
        torch.testing.assert_close(weighted[key], evidence[key])


@pytest.mark.parametrize("deep_supervision", [False, True])
def test_forward_equals_the_plain_unet_with_the_same_weights(deep_supervision):
    plain = make_unet(deep_supervision=deep_supervision, seed=0).eval()
    net = make_multitask(deep_supervision=deep_supervision)
    # a freshly seeded wrapper differs until the plain weights are loaded
    net.load_state_dict({**plain.state_dict(), **{f"head.{k}": v for k, v in net.head.state_dict().items()}})
    x = image()
    with torch.no_grad():
        expected, got = plain(x), net(x)
    if deep_supervision:
        assert isinstance(got, (list, tuple)) and len(got) == len(expected) == 2
        assert got[0].shape == (2, 3, *SHAPE)
        for a, b in zip(got, expected):
            assert torch.equal(a, b)
    else:
        assert got.shape == (2, 3, *SHAPE)
        assert torch.equal(got, expected)


def test_state_dict_is_the_plain_unet_plus_head_keys():
    plain_keys = set(make_unet().state_dict())
    keys = set(make_multitask().state_dict())
    head_keys = keys - plain_keys
    assert plain_keys <= keys
    assert head_keys and all(k.startswith("head.") for k in head_keys)
    assert not any(k.startswith("head.") for k in plain_keys)
    # an nnU-Net checkpoint of the plain network loads, only the head is missing (its case stage,
    # absent from checkpoints older than it, loads as not fitted rather than missing)
    missing, unexpected = make_multitask().load_state_dict(make_unet().state_dict(), strict=False)
    assert set(missing) == {k for k in head_keys if not k.startswith("head.case_stage.")}
    assert unexpected == []


def test_region_probabilities_sigmoid_regions_and_softmax_labels():
    logits = torch.randn((2, 2, 2, 3, 3), generator=torch.Generator().manual_seed(1))
    regions = make_multitask(num_classes=2)
    assert regions.regions
    whole, lesion = regions.region_probabilities(logits)
    torch.testing.assert_close(whole, torch.sigmoid(logits[:, 0:1]))
    torch.testing.assert_close(lesion, torch.sigmoid(logits[:, 1:2]))

    logits = torch.randn((2, 3, 2, 3, 3), generator=torch.Generator().manual_seed(2))
    labels = make_multitask(num_classes=3)
    assert not labels.regions
    whole, lesion = labels.region_probabilities(logits)
    p = torch.softmax(logits, 1)
    assert whole.shape == lesion.shape == (2, 1, 2, 3, 3)
    torch.testing.assert_close(whole, 1 - p[:, 0:1])
    torch.testing.assert_close(lesion, p[:, 2:3])


@pytest.mark.parametrize("deep_supervision", [False, True])
def test_forward_multitask_without_regions_pools_hard_and_soft_predictions(deep_supervision):
    net = make_multitask(deep_supervision=deep_supervision)
    x = image()
    with torch.no_grad():
        seg, evidence = net.forward_multitask(x)
        skips = net.encoder(x)
        full = seg[0] if deep_supervision else seg
        assert full.shape == (2, 3, *SHAPE)
        p_whole, p_lesion = net.region_probabilities(full)
        hard = net.head.pool(x, skips, (p_whole > 0.5).float(), (p_lesion > 0.5).float())
        soft = net.head.pool(x, skips, p_whole, p_lesion)
    assert set(evidence) == {"sum", "sum_sq", "weight", "soft_sum", "soft_sum_sq", "soft_weight"}
    for key in hard:
        torch.testing.assert_close(evidence[key], hard[key])
        torch.testing.assert_close(evidence[f"soft_{key}"], soft[key])


def test_classify_falls_back_to_soft_evidence_only_without_hard_lesion_voxels():
    net = make_multitask()
    x = image()
    whole, lesion = masks()
    hard_lesion = lesion.clone()
    hard_lesion[1] = 0  # case 1: nothing passed 0.5
    soft_lesion = lesion * 0.3
    with torch.no_grad():
        skips = net.encoder(x)
        hard = net.head.pool(x, skips, whole, hard_lesion)
        soft = net.head.pool(x, skips, whole * 0.7, soft_lesion)
        evidence = {**hard, **{f"soft_{k}": v for k, v in soft.items()}}
        logits = net.classify(evidence)
        hard_logits = net.head.classify(hard)
        soft_logits = net.head.classify(soft)
    assert not torch.allclose(hard_logits, soft_logits)
    torch.testing.assert_close(logits[0], hard_logits[0])
    torch.testing.assert_close(logits[1], soft_logits[1])
    with torch.no_grad():
        # without soft keys (training-style evidence) the hard logits come back unchanged
        torch.testing.assert_close(net.classify(hard), hard_logits)


def test_classification_gradient_reaches_head_and_first_encoder_stage():
    net = make_multitask().train()
    x = image()
    whole, lesion = masks()
    _, evidence = net.forward_multitask(x, whole, lesion)
    logits = net.head.classify(evidence)
    nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    for name, p in net.head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    stage0 = [p for p in net.encoder.stages[0].parameters() if p.grad is not None]
    assert stage0 and any(p.grad.abs().sum() > 0 for p in stage0)
    # the segmentation output is not part of this loss
    assert all(p.grad is None for p in net.decoder.seg_layers.parameters())


def encoder_gradient_of_classification(encoder_gradient: float) -> list[torch.Tensor]:
    net = make_multitask().train()
    whole, lesion = masks()
    torch.manual_seed(0)  # the same dropout mask in every call
    _, evidence = net.forward_multitask(image(), whole, lesion, encoder_gradient=encoder_gradient)
    logits = net.head.classify(evidence)
    nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    assert all(p.grad is not None for p in net.head.classifier.parameters())
    return [
        torch.zeros_like(p) if p.grad is None else p.grad
        for p in net.encoder.stages[0].parameters()
    ]


def test_encoder_gradient_scales_the_classification_gradient_into_the_encoder():
    full = encoder_gradient_of_classification(1.0)
    tenth = encoder_gradient_of_classification(0.1)
    detached = encoder_gradient_of_classification(0.0)
    assert any(g.abs().sum() > 0 for g in full)
    full, tenth = torch.cat([g.flatten() for g in full]), torch.cat([g.flatten() for g in tenth])
    torch.testing.assert_close(tenth, 0.1 * full, rtol=1e-4, atol=1e-5 * float(full.abs().max()))
    # 0: the encoder learns from the segmentation loss alone; the head still learns
    assert all(g.abs().sum() == 0 for g in detached)
    assert full.abs().max() > 0


def test_scale_gradient_is_the_identity_forward():
    x = torch.randn(3, 4, requires_grad=True)
    assert not scale_gradient(x, 0.0).requires_grad
    for factor in (0.3, 1.0):
        y = scale_gradient(x, factor)
        torch.testing.assert_close(y, x)
        (y * 2).sum().backward()
        torch.testing.assert_close(x.grad, torch.full_like(x, 2 * factor))
        x.grad = None


def test_running_standardizer_first_batch_then_running_average():
    std = RunningStandardizer(2)
    x = torch.tensor([[1.0, 10.0], [3.0, 30.0]])
    torch.testing.assert_close(std(x), x / (1 + 1e-5) ** 0.5)  # no statistics yet: identity
    std.update(x)
    torch.testing.assert_close(std.running_mean, torch.tensor([2.0, 20.0]))
    # the unit prior keeps weight 1/2 after one batch (batch variances 1 and 100)
    torch.testing.assert_close(std.running_var, torch.tensor([1.0, 50.5]))
    expected = torch.tensor([[-1.0, -10 / 50.5**0.5], [1.0, 10 / 50.5**0.5]])
    torch.testing.assert_close(std(x), expected, rtol=1e-4, atol=1e-4)
    std.update(torch.tensor([[4.0, 40.0], [4.0, 40.0]]))  # second batch weighs 1/2
    torch.testing.assert_close(std.running_mean, torch.tensor([3.0, 30.0]))
    assert int(std.num_updates) == 2


def test_standardizer_statistics_are_checkpointed_and_learn_only_in_training():
    net = make_multitask()
    keys = set(net.state_dict())
    assert {"head.standardize.running_mean", "head.standardize.running_var", "head.standardize.num_updates"} <= keys
    x = image()
    whole, lesion = masks()
    lesion[1] = 0
    with torch.no_grad():
        _, evidence = net.forward_multitask(x, whole, lesion)
        net.eval()
        net.head.classify(evidence)
        assert int(net.head.standardize.num_updates) == 0
        net.train()
        descriptor = net.head.describe(evidence)
        net.head.classify(evidence)
    assert int(net.head.standardize.num_updates) == 1
    # only the case with a lesion feeds the statistics
    torch.testing.assert_close(net.head.standardize.running_mean, descriptor[0])
    # one case has no spread: the unit prior keeps half the weight
    torch.testing.assert_close(net.head.standardize.running_var, torch.full_like(descriptor[0], 0.5))
    with torch.no_grad():
        no_lesion = net.head.pool(x, net.encoder(x), whole, torch.zeros_like(lesion))
        net.head.classify(no_lesion)
    assert int(net.head.standardize.num_updates) == 1


def test_classify_is_the_output_layer_of_hidden_features():
    net = make_multitask()
    x = image()
    with torch.no_grad():
        _, evidence = net.forward_multitask(x)
        hidden = net.hidden_features(evidence)
        assert hidden.shape == (2, net.head.classifier[-1].in_features)
        torch.testing.assert_close(net.classify(evidence), net.head.classifier[-1](hidden))


def test_output_layer_sees_the_hidden_layer_and_the_image_statistics():
    net = make_multitask().eval()
    whole, lesion = masks()
    with torch.no_grad():
        _, evidence = net.forward_multitask(image(), whole, lesion)
        hidden = net.head.hidden_features(evidence)
        standardized = net.head.standardize(net.head.describe(evidence))
    width = 1 + 4 + 8
    n_hidden = net.head.classifier[0].out_features
    assert hidden.shape == (2, n_hidden + 11)  # one input channel, eleven statistics
    torch.testing.assert_close(hidden[:, n_hidden:], standardized[:, ::width])
    # without the input stage there is no direct path
    assert LesionPoolingHead([1, 4, 8, 16], stages=(0, 1)).classifier[-1].in_features == n_hidden


def test_heads_are_registered_once_and_agree_with_trainers_and_schema():
    import importlib

    import yaml

    from pancreas_mtl.nnunet_env import HEAD_TRAINERS, trainer_name
    from pancreas_mtl.training.heads import HEADS
    from pancreas_mtl.training.settings import SCHEMA

    ext = importlib.import_module("pancreas_mtl.nnunet_ext.pancreas_mtl_trainers")
    schema = yaml.safe_load(SCHEMA.read_text())["properties"]["train"]["properties"]["head"]
    assert set(HEADS) == set(HEAD_TRAINERS) == set(schema["enum"])
    for head in HEADS:
        trainer = getattr(ext, trainer_name(head))
        assert trainer.__name__ == trainer_name(head)
        assert trainer.head_name == head


@pytest.mark.parametrize("num_subtypes", [2, 4])
@pytest.mark.parametrize("head_name", ["lesion_pooling", "attention_fusion"])
def test_every_registered_head_trains_a_step_and_predicts(head_name, num_subtypes):
    from pancreas_mtl.training.heads import HEADS

    unet = make_unet(3)
    head = HEADS[head_name](stage_channels(unet, 1), num_classes=num_subtypes)
    net = MultiTaskUNet(unet, head, 3).train()
    whole, lesion = masks()
    optimizer = torch.optim.SGD(net.head.parameters(), lr=0.1)
    _, evidence = net.forward_multitask(image(), whole, lesion, encoder_gradient=0.0)
    logits = net.head.classify(evidence)
    assert logits.shape == (2, num_subtypes)
    loss = nn.functional.cross_entropy(logits, torch.tensor([0, num_subtypes - 1]))
    loss.backward()
    before = [p.detach().clone() for p in net.head.parameters()]
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, net.head.parameters()))
    net.eval()
    with torch.no_grad():
        _, evidence = net.forward_multitask(image(seed=1))
        probabilities = torch.softmax(net.classify(evidence), -1)
    assert probabilities.shape == (2, num_subtypes)
    assert torch.allclose(probabilities.sum(-1), torch.ones(2))


def real_size_tile(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A tile at real magnitudes: tens of thousands of lesion and parenchyma voxels, features of a
    few units, nnU-Net's Gaussian tile weights (up to 10)."""
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    shape = (32, 64, 64)
    g = torch.Generator().manual_seed(seed)
    x = 3 + torch.randn((1, 1, *shape), generator=g)
    whole = torch.zeros((1, 1, *shape))
    lesion = torch.zeros((1, 1, *shape))
    whole[..., 2:30, 4:60, 4:60] = 1
    lesion[..., 6:26, 12:52, 12:52] = 1  # 32,000 voxels
    gaussian = compute_gaussian(
        shape, sigma_scale=1.0 / 8, value_scaling_factor=10, device=torch.device("cpu")
    )[None, None]
    return x, whole, lesion, gaussian.float()


def test_weighted_moments_stay_fp32_and_finite_under_fp16_autocast():
    x, _, lesion, gaussian = real_size_tile()
    weights = lesion * gaussian
    reference = weighted_moments(x, weights)
    # the same bmm in fp16 overflows at these magnitudes (65,504): what CUDA autocast used to do
    half = torch.bmm(
        (x * x).flatten(2).half(), weights.flatten(2).half().transpose(1, 2)
    )
    assert not half.isfinite().all()
    with torch.autocast("cpu", dtype=torch.float16):
        moments = weighted_moments(x, weights)
    for got, want in zip(moments, reference):
        assert got.dtype == torch.float32 and got.isfinite().all()
        torch.testing.assert_close(got, want)


def test_lesion_pooling_under_fp16_autocast_gives_finite_evidence_and_probabilities():
    unet = make_unet(3)
    net = MultiTaskUNet(unet, LesionPoolingHead(stage_channels(unet, 1)), 3).eval()
    x, whole, lesion, gaussian = real_size_tile()
    with torch.no_grad():
        reference = net.head.pool(x, net.encoder(x), whole, lesion, gaussian)
        with torch.autocast("cpu", dtype=torch.float16):
            skips = net.encoder(x)
            evidence = net.head.pool(x, skips, whole, lesion, gaussian)
        probabilities = torch.softmax(net.head.classify(evidence), -1)
    assert reference["sum_sq"].max() > 65504  # real magnitudes: beyond fp16's range
    for key, value in evidence.items():
        assert value.dtype == torch.float32 and value.isfinite().all(), key
    # the input stage is pooled from the same fp32 image: identical sums
    torch.testing.assert_close(evidence["sum"][..., 0], reference["sum"][..., 0])
    assert probabilities.isfinite().all()


def test_standardizer_leaves_out_non_finite_rows():
    std = RunningStandardizer(2)
    std.update(torch.tensor([[float("nan"), 1.0], [float("inf"), 2.0]]))
    assert int(std.num_updates) == 0
    torch.testing.assert_close(std.running_mean, torch.zeros(2))
    std.update(torch.tensor([[1.0, 10.0], [float("nan"), 0.0], [3.0, 30.0]]))
    torch.testing.assert_close(std.running_mean, torch.tensor([2.0, 20.0]))
    assert std.running_var.isfinite().all()


def test_forward_with_regions_is_forward_multitask():
    net = make_multitask()
    x = image()
    whole, lesion = masks()
    with torch.no_grad():
        seg, evidence = net(x, whole, lesion)
        seg2, evidence2 = net.forward_multitask(x, whole, lesion)
        seg3, evidence3 = net(x, multitask=True)
        seg4, evidence4 = net.forward_multitask(x)
    torch.testing.assert_close(seg, seg2)
    torch.testing.assert_close(seg3, seg4)
    for a, b in ((evidence, evidence2), (evidence3, evidence4)):
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k])
    torch.testing.assert_close(net(x), seg)
