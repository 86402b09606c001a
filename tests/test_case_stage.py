"""The case descriptor and the case stage (issue 11: a classifier beyond first-order statistics
that survives an imperfect lesion mask)."""

import math

import numpy as np
import pytest
import torch

from pancreas_mtl.training.case_stage import AUTO_CANDIDATES, block_columns, fit_case_stage
from pancreas_mtl.training.descriptors import NAMES, case_descriptor, ct_to_hu, lesion_candidate
from pancreas_mtl.training.heads import CaseClassifier

SPACING = (2.0, 1.0, 1.0)
SHAPE = (24, 48, 64)


def grid():
    return np.meshgrid(*[np.arange(n) * s for n, s in zip(SHAPE, SPACING)], indexing="ij")


def gland_case(lesion_radius_mm=6.0, lesion_hu=20.0, lobulated=False, duct_radius_mm=0.0, seed=0):
    """A tubular gland along x (100 HU) in fat, a lesion in it, optionally a fluid duct along the gland."""
    z, y, x = grid()
    rng = np.random.default_rng(seed)
    hu = np.full(SHAPE, -100.0, dtype=np.float32)
    gland = ((z - 24) ** 2 + (y - 24) ** 2 <= 9.0**2) & (x >= 4) & (x < 60)
    hu[gland] = 100.0
    r = np.sqrt((z - 24) ** 2 + (y - 24) ** 2 + (x - 20) ** 2)
    if lobulated:
        r = r * (1 + 0.35 * np.sin(3 * np.arctan2(y - 24, x - 20)) * np.cos(2 * np.arctan2(z - 24, x - 20)))
    lesion = gland & (r <= lesion_radius_mm)
    hu[lesion] = lesion_hu
    if duct_radius_mm:
        duct = gland & ~lesion & ((z - 24) ** 2 + (y - 24) ** 2 <= duct_radius_mm**2) & (x > 20 + lesion_radius_mm)
        hu[duct] = 10.0
    hu += rng.normal(0, 3.0, SHAPE).astype(np.float32)
    return hu, gland.astype(np.float32), lesion.astype(np.float32)


def describe(hu, whole, lesion):
    return dict(zip(NAMES, case_descriptor(hu, whole, lesion, SPACING)))


def test_descriptor_is_finite_without_lesion_or_pancreas():
    hu, whole, lesion = gland_case()
    for w, l in ((whole, np.zeros_like(lesion)), (np.zeros_like(whole), np.zeros_like(lesion)), (whole, lesion)):
        values = case_descriptor(hu, w, l, SPACING)
        assert values.shape == (len(NAMES),) and np.isfinite(values).all()


def test_descriptor_reads_shape_margin_and_duct():
    hu, whole, lesion = gland_case()
    round_ = describe(hu, whole, lesion)
    assert round_["sphericity"] > 0.6
    assert round_["lesion_mean_rel"] == pytest.approx(-80.0, abs=3.0)
    assert round_["fluid_fraction"] > 0.5
    assert describe(*gland_case(lesion_hu=70.0))["fluid_fraction"] < 0.05
    assert math.exp(round_["lesion_log_volume"]) - 1 == pytest.approx(4 / 3 * math.pi * 6.0**3, rel=0.25)

    lobulated = describe(*gland_case(lesion_radius_mm=8.0, lobulated=True))
    assert lobulated["sphericity"] < round_["sphericity"] - 0.1

    assert round_["duct_diameter_mm"] < 2.0
    ducted = describe(*gland_case(duct_radius_mm=2.5))
    assert ducted["duct_diameter_mm"] == pytest.approx(5.0, abs=1.5)


def test_soft_lesion_statistics_survive_a_threshold_shift():
    """Weighted by the soft probability, the lesion's intensity barely moves when the network's
    confidence drops below 0.5 everywhere; the candidate falls back to the most probable lesion."""
    hu, whole, lesion = gland_case()
    confident = describe(hu, whole, lesion * 0.95)
    unsure = describe(hu, whole, lesion * 0.4)
    assert lesion_candidate(lesion * 0.4).sum() == lesion.sum()
    for name in ("lesion_mean_rel", "lesion_std", "sphericity", "fluid_fraction", "edge_sharpness"):
        assert unsure[name] == pytest.approx(confident[name], rel=0.05, abs=1.0), name
    assert unsure["max_lesion_probability"] == pytest.approx(0.4)


def test_ct_to_hu_inverts_nnunet_ct_normalisation():
    properties = {"mean": 60.0, "std": 40.0}
    hu = np.array([-50.0, 0.0, 120.0])
    np.testing.assert_allclose(ct_to_hu((hu - 60.0) / 40.0, properties), hu, rtol=1e-6)
    np.testing.assert_array_equal(ct_to_hu(hu, None), hu)


def separable(n=60, seed=0):
    """Head features that carry nothing, a descriptor whose 'sphericity' carries the class."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    head = rng.normal(size=(n, 8 + 3))
    descriptor = rng.normal(size=(n, len(NAMES)))
    descriptor[:, NAMES.index("sphericity")] += 8.0 * y
    return head, descriptor, y


def test_fit_case_stage_chooses_by_cross_validation_on_training_cases():
    head, descriptor, y = separable()
    fit = fit_case_stage(head, descriptor, y, np.ones(3), n_hidden=8)
    assert fit.feature_set in AUTO_CANDIDATES
    assert set(fit.cv) == {f"{s}, C={c:g}" for s in AUTO_CANDIDATES for c in (0.1, 0.3, 1.0)}
    x = np.concatenate([head, descriptor], 1)
    blocks = block_columns(8, 3)
    # the hidden layer is never used by auto: its activations have seen the training labels
    assert not fit.weight[:, blocks["hidden"]].any()
    logits = ((x - fit.mean) / fit.scale) @ fit.weight.T + fit.bias
    assert (logits.argmax(1) == y).mean() > 0.95

    first = fit_case_stage(head, descriptor, y, np.ones(3), n_hidden=8, choice="first_order")
    used = np.flatnonzero(first.weight.any(0))
    assert set(used) <= set(blocks["first_order"])
    with pytest.raises(ValueError, match="unknown case stage"):
        fit_case_stage(head, descriptor, y, np.ones(3), n_hidden=8, choice="everything")


def test_fit_case_stage_two_subtypes():
    head, descriptor, y = separable()
    keep = y < 2
    fit = fit_case_stage(head[keep], descriptor[keep], y[keep], np.ones(2), n_hidden=8)
    x = np.concatenate([head[keep], descriptor[keep]], 1)
    logits = ((x - fit.mean) / fit.scale) @ fit.weight.T + fit.bias
    assert fit.weight.shape == (2, x.shape[1])
    assert (logits.argmax(1) == y[keep]).mean() > 0.95


def test_case_classifier_buffers_travel_in_the_state_dict():
    head, descriptor, y = separable()
    fit = fit_case_stage(head, descriptor, y, np.ones(3), n_hidden=8)
    stage = CaseClassifier(11, len(NAMES), 3)
    assert not stage.is_fitted
    stage.set(fit.mean, fit.scale, fit.weight, fit.bias)
    loaded = CaseClassifier(11, len(NAMES), 3)
    loaded.load_state_dict(stage.state_dict())
    assert loaded.is_fitted
    got = loaded(torch.as_tensor(head, dtype=torch.float32), torch.as_tensor(descriptor, dtype=torch.float32))
    want = ((np.concatenate([head, descriptor], 1) - fit.mean) / fit.scale) @ fit.weight.T + fit.bias
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)
    # a checkpoint from before the case stage loads as not fitted
    old = CaseClassifier(11, len(NAMES), 3)
    old.load_state_dict({}, strict=True)
    assert not old.is_fitted


def test_fitted_case_stage_classifies_and_needs_the_descriptor():
    from test_heads import make_multitask

    net = make_multitask().eval()
    x = torch.randn(1, 1, 8, 16, 16)
    with torch.no_grad():
        _, evidence = net(x, multitask=True)
        head_logits = net.classify(evidence)
        n = net.case_stage.n_head + net.case_stage.n_descriptor
        weight = np.zeros((3, n))
        weight[2, -1] = 5.0
        net.case_stage.set(np.zeros(n), np.ones(n), weight, np.zeros(3))
        descriptor = torch.zeros(1, len(NAMES))
        descriptor[0, -1] = 1.0
        assert net.classify(evidence, descriptor).argmax().item() == 2
        assert not torch.equal(net.classify(evidence, descriptor), head_logits)
        with pytest.raises(ValueError, match="descriptor"):
            net.classify(evidence)
