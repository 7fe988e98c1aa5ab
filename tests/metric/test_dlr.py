"""D_LR against the independent n×n formula, the exact cases and invariances of SPEC §2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import brute_force as bf
from dlr_hf.errors import (
    MissingOutputsError,
    NonFiniteError,
    ShapeMismatchError,
    TooFewSamplesError,
    UndefinedDLRError,
)
from dlr_hf.metric import DLRAccumulator, compute_dlr


def random_problem(n: int, p: int, c: int, seed: int = 0, head_rank: int | None = None, mean: float = 0.0, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(p, p)) * np.exp(-np.arange(p) / max(p / 4, 1))  # anisotropic spectrum
    phi = mean + spread * rng.normal(size=(n, p)) @ mixing
    weight = rng.normal(size=(c, p))
    if head_rank is not None:
        weight = rng.normal(size=(c, head_rank)) @ rng.normal(size=(head_rank, p))
    logits = phi @ weight.T + rng.normal(size=c)
    return phi, logits, weight


SHAPES = [
    # (n, p, C, head rank)
    (50, 80, 10, None),  # n < p
    (400, 30, 10, None),  # n > p
    (200, 16, 1, None),  # C = 1
    (200, 16, 15, None),  # C = p − 1
    (200, 16, 40, None),  # C > p (degenerate)
    (300, 24, 12, 5),  # rank-deficient head
    (12, 40, 20, None),  # n − 1 ≤ C
    (300, 10, 30, 4),  # C > p with a rank-deficient head (r < feature rank < C)
]


@pytest.mark.parametrize("n,p,c,head_rank", SHAPES)
def test_matches_brute_force(n, p, c, head_rank):
    phi, logits, _ = random_problem(n, p, c, seed=n + p + c, head_rank=head_rank)
    expected, rank = bf.dlr(phi, logits)
    result = compute_dlr(phi, logits)
    assert result.rank == rank
    assert result.dlr == pytest.approx(expected, abs=1e-10)
    assert 0.0 <= result.dlr <= 1.0
    assert (result.num_samples, result.feature_dim, result.num_outputs) == (n, p, c)
    feature_rank = np.linalg.matrix_rank(bf.centre(phi), tol=1e-6 * np.linalg.svd(bf.centre(phi), compute_uv=False)[0])
    assert result.feature_rank == feature_rank
    assert result.degenerate == (rank >= feature_rank)


@pytest.mark.parametrize("n,p,c,head_rank", SHAPES)
def test_head_weight_path_matches_brute_force(n, p, c, head_rank):
    phi, logits, weight = random_problem(n, p, c, seed=7 * n + p, head_rank=head_rank)
    expected, rank = bf.dlr(phi, logits)
    accumulator = DLRAccumulator(track_outputs=False)
    accumulator.update(phi)
    result = accumulator.compute(head_weight=weight)
    assert result.rank == rank
    assert result.dlr == pytest.approx(expected, abs=1e-9)


def test_huge_mean_tiny_spread_streamed_in_batches():
    phi, logits, weight = random_problem(600, 20, 5, seed=3, mean=1e4, spread=1e-3)
    expected, _ = bf.dlr(phi, logits)
    accumulator = DLRAccumulator()
    for start in range(0, 600, 64):
        accumulator.update(phi[start : start + 64], logits[start : start + 64])
    assert accumulator.compute().dlr == pytest.approx(expected, abs=1e-8)
    scatter = accumulator.moments.scatter[:20, :20].numpy()
    reference = bf.centre(phi).T @ bf.centre(phi)
    assert np.abs(scatter - reference).max() <= 1e-9 * np.abs(reference).max()


def collapsed_problem(num_classes=4, per_class=25, p=12, seed=0):
    """Φ = M[y] + g: class means forming a centred isotropic simplex, equal counts, no spread."""
    rng = np.random.default_rng(seed)
    simplex = np.eye(num_classes) - 1.0 / num_classes  # centred, isotropic on its span
    basis, _ = np.linalg.qr(rng.normal(size=(p, num_classes)))
    means = 3.0 * simplex @ basis.T
    labels = np.repeat(np.arange(num_classes), per_class)
    rng.shuffle(labels)
    phi = means[labels] + rng.normal(size=p)  # g: a global offset
    logits = np.eye(num_classes)[labels] * 5.0 - 1.0  # spans the class indicators
    return phi, logits, labels


def test_exact_balanced_collapse_is_maximally_rich():
    phi, logits, labels = collapsed_problem()
    result = compute_dlr(phi, logits, labels=labels)
    assert result.dlr <= 1e-9
    assert result.nc1 == pytest.approx(0.0, abs=1e-9)
    assert result.accuracy == 1.0


@pytest.mark.parametrize("p,c", [(8, 3), (32, 10), (50, 1)])
def test_isotropic_features_give_one_minus_root_c_over_p(p, c):
    rng = np.random.default_rng(p)
    centred = bf.centre(rng.normal(size=(3 * p, p)))
    q, _ = np.linalg.qr(centred)  # orthonormal, still centred columns: S = s·I
    phi = 2.5 * q + rng.normal(size=p)
    weight = rng.normal(size=(c, p))
    result = compute_dlr(phi, phi @ weight.T)
    assert result.dlr == pytest.approx(1 - np.sqrt(c / p), abs=1e-12)
    accumulator = DLRAccumulator(track_outputs=False)
    accumulator.update(phi)
    assert accumulator.compute(head_weight=weight).dlr == pytest.approx(1 - np.sqrt(c / p), abs=1e-12)


def test_invariances():
    phi, logits, weight = random_problem(150, 20, 6, seed=11)
    base = compute_dlr(phi, logits).dlr
    rng = np.random.default_rng(0)
    rotation, _ = np.linalg.qr(rng.normal(size=(20, 20)))
    mixing = rng.normal(size=(6, 6))
    permutation = rng.permutation(150)
    variants = {
        "scale features": (7.0 * phi, logits),
        "scale outputs": (phi, 0.01 * logits),
        "translate features": (phi + 100.0, logits),
        "translate outputs": (phi, logits - 42.0),
        "mix outputs": (phi, logits @ mixing),
        "rotate features with the head": (phi @ rotation, (phi @ rotation) @ (weight @ rotation).T),
        "permute samples": (phi[permutation], logits[permutation]),
    }
    for name, (features, outputs) in variants.items():
        assert compute_dlr(features, outputs).dlr == pytest.approx(base, abs=1e-10), name
    stretched = phi * np.linspace(0.1, 10, 20)
    assert abs(compute_dlr(stretched, logits).dlr - base) > 1e-3, "anisotropic rescaling must change D_LR"


@pytest.mark.parametrize("parts", [2, 3, 7])
def test_merging_random_splits_equals_one_pass(parts):
    phi, logits, _ = random_problem(500, 16, 4, seed=parts, mean=50.0)
    labels = np.random.default_rng(parts).integers(0, 4, size=500)
    whole = DLRAccumulator()
    whole.update(phi, logits, labels)
    cuts = np.sort(np.random.default_rng(parts).choice(np.arange(1, 500), size=parts - 1, replace=False))
    merged = DLRAccumulator()
    for chunk in np.split(np.arange(500), cuts):
        part = DLRAccumulator()
        part.update(phi[chunk], logits[chunk], labels[chunk])
        merged.merge(part)
    for key in ("scatter", "mean"):
        a = getattr(whole.moments, key)
        b = getattr(merged.moments, key)
        assert torch.linalg.norm(a - b) <= 1e-12 * torch.linalg.norm(a)
    assert merged.num_samples == 500
    one, other = whole.compute(), merged.compute()
    assert other.dlr == pytest.approx(one.dlr, rel=1e-12)
    assert other.nc1 == pytest.approx(one.nc1, rel=1e-10)
    assert other.accuracy == one.accuracy


def test_streaming_with_head_weight_equals_streaming_with_logits():
    phi, logits, weight = random_problem(300, 24, 8, seed=5)
    with_logits = DLRAccumulator()
    feature_only = DLRAccumulator(track_outputs=False)
    for start in range(0, 300, 37):
        with_logits.update(phi[start : start + 37], logits[start : start + 37])
        feature_only.update(phi[start : start + 37])
    a, b = with_logits.compute(), feature_only.compute(head_weight=weight)
    assert a.dlr == pytest.approx(b.dlr, abs=1e-10)
    assert a.rank == b.rank
    np.testing.assert_allclose(a.pi, b.pi, atol=1e-8)
    np.testing.assert_allclose(a.utilisation, b.utilisation, atol=1e-8)


def test_eigen_form_and_visualisations_match_brute_force():
    phi, logits, weight = random_problem(400, 12, 3, seed=9)
    labels = np.random.default_rng(1).integers(0, 3, size=400)
    result = DLRAccumulator()
    result.update(phi, logits, labels)
    result = result.compute()
    rho, vectors = bf.eigen(phi)
    np.testing.assert_allclose(result.spectrum, rho, rtol=1e-10)
    # π_k = ‖P_Y e_k‖² with e_k = Φ_c v_k / √(nρ_k)
    projector, rank = bf.output_projector(logits)
    eigenfunctions = bf.centre(phi) @ vectors / np.sqrt(400 * rho)
    pi = np.sum((projector @ eigenfunctions) ** 2, axis=0)
    np.testing.assert_allclose(result.pi, pi, atol=1e-9)
    cka = np.sum(rho * pi) / (np.sqrt(rank) * np.sqrt(np.sum(rho**2)))
    assert result.cka == pytest.approx(cka, abs=1e-10)
    utilisation = np.cumsum(rho * np.sum((weight @ vectors) ** 2, axis=0))
    np.testing.assert_allclose(result.utilisation, utilisation / utilisation[-1], atol=1e-9)
    targets = bf.one_hot_centred(labels, 3)
    quality = np.cumsum(np.sum((targets.T @ eigenfunctions) ** 2, axis=0)) / np.sum(targets**2)
    np.testing.assert_allclose(result.quality, quality, atol=1e-9)
    assert result.nc1 == pytest.approx(bf.nc1(phi, labels), rel=1e-8)
    singular = np.linalg.svd(bf.centre(phi), compute_uv=False)
    share = singular / singular.sum()
    assert result.effective_rank == pytest.approx(np.exp(-np.sum(share * np.log(share))), rel=1e-10)
    assert result.accuracy == pytest.approx(np.mean(logits.argmax(1) == labels))


def test_degenerate_when_outputs_cover_the_feature_space():
    phi, logits, _ = random_problem(100, 8, 20, seed=2)
    result = compute_dlr(phi, logits)
    assert result.degenerate
    assert result.rank == result.feature_rank == 8
    assert any("degenerate" in warning for warning in result.warnings)
    assert "isotropic" in result.degenerate_reason


def test_imbalanced_classes_are_called_out():
    rng = np.random.default_rng(0)
    labels = np.array([0] * 90 + [1] * 10)
    phi = np.eye(2)[labels] @ rng.normal(size=(2, 6))
    result = compute_dlr(phi + 1e-3 * rng.normal(size=phi.shape), np.eye(2)[labels], labels=labels)
    assert any("balanced" in warning for warning in result.warnings)


def test_ignored_labels_do_not_count():
    phi, logits, _ = random_problem(60, 6, 3, seed=4)
    labels = np.random.default_rng(0).integers(0, 3, size=60)
    labels[:10] = -100
    result = compute_dlr(phi, logits, labels=labels)
    assert result.num_labelled == 50
    assert result.accuracy == pytest.approx(np.mean(logits[10:].argmax(1) == labels[10:]))


def test_state_dict_round_trip():
    phi, logits, _ = random_problem(80, 6, 3, seed=8)
    labels = np.arange(80) % 3
    original = DLRAccumulator()
    original.update(phi, logits, labels)
    restored = DLRAccumulator()
    restored.load_state_dict(original.state_dict())
    assert restored.compute().to_dict() == original.compute().to_dict()


@pytest.mark.parametrize(
    "features,logits,error",
    [
        (np.ones((1, 4)), np.ones((1, 2)), TooFewSamplesError),
        (np.ones((10, 4)), np.random.default_rng(0).normal(size=(10, 2)), UndefinedDLRError),
        (np.random.default_rng(0).normal(size=(10, 4)), np.ones((10, 2)), UndefinedDLRError),
    ],
)
def test_undefined_cases_raise(features, logits, error):
    with pytest.raises(error):
        compute_dlr(features, logits)


def test_non_finite_samples_are_counted_and_not_added():
    accumulator = DLRAccumulator()
    phi = np.random.default_rng(0).normal(size=(10, 4))
    logits = np.random.default_rng(1).normal(size=(10, 2))
    phi[2, 1] = np.nan
    logits[5, 0] = np.inf
    with pytest.raises(NonFiniteError, match="2 of 10 samples"):
        accumulator.update(phi, logits)
    assert accumulator.num_samples == 0


def test_shape_errors():
    accumulator = DLRAccumulator()
    with pytest.raises(ShapeMismatchError):
        accumulator.update(np.ones((5, 3)), np.ones((4, 2)))
    with pytest.raises(ShapeMismatchError):
        accumulator.update(np.ones((5, 3, 2)), np.ones((5, 2)))
    accumulator.update(np.random.default_rng(0).normal(size=(5, 3)), np.ones((5, 2)))
    with pytest.raises(ShapeMismatchError):
        accumulator.update(np.ones((5, 4)), np.ones((5, 2)))
    with pytest.raises(MissingOutputsError):
        accumulator.update(np.ones((5, 3)))
    features_only = DLRAccumulator(track_outputs=False)
    features_only.update(np.random.default_rng(0).normal(size=(5, 3)))
    with pytest.raises(MissingOutputsError):
        features_only.compute()
    with pytest.raises(ShapeMismatchError):
        features_only.compute(head_weight=np.ones((2, 4)))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(3, 40),
    p=st.integers(1, 12),
    c=st.integers(1, 12),
    seed=st.integers(0, 10_000),
    batch=st.integers(1, 16),
)
def test_property_streamed_equals_brute_force(n, p, c, seed, batch):
    phi, logits, _ = random_problem(n, p, c, seed=seed)
    expected, rank = bf.dlr(phi, logits)
    accumulator = DLRAccumulator()
    for start in range(0, n, batch):
        accumulator.update(phi[start : start + batch], logits[start : start + batch])
    result = accumulator.compute()
    assert result.rank == rank
    assert result.dlr == pytest.approx(expected, abs=1e-8)



def test_parameter_baselines_cover_frozen_parameters():
    from torch import nn

    from dlr_hf.metric import parameter_change, parameter_norm, parameter_snapshot

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    model[0].weight.requires_grad_(False)
    initial = parameter_snapshot(model)
    expected_norm = sum(float(p.detach().double().pow(2).sum()) for p in model.parameters())
    assert parameter_norm(model) == pytest.approx(expected_norm, rel=1e-12)
    with torch.no_grad():
        model[1].weight.add_(1.0)
    theta0 = torch.cat([p.flatten() for p in initial.values()]).double()
    theta = torch.cat([p.detach().flatten() for p in model.parameters()]).double()
    assert parameter_change(model, initial) == pytest.approx(float((theta - theta0).norm() / theta0.norm()), rel=1e-6)
