"""Messy input: unlabelled and bad labels, aliasing, undefined cases, rtol, overflow (issue #9 §1).

Every number is checked against an independent n×n computation on the rows that should count.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import brute_force as bf
from dlr_hf.errors import InvalidArgumentError, NonFiniteError, ShapeMismatchError, UndefinedDLRError
from dlr_hf.metric import (
    ClassMoments,
    DLRAccumulator,
    LabelStatistics,
    LinearCKAAccumulator,
    MergeableState,
    StreamingMoments,
    compute_dlr,
)


def labelled_problem(n: int, p: int, c: int, seed: int):
    """Class-structured features (so NC1 and Q(k) are informative) and a linear head."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, size=n)
    means = rng.normal(size=(c, p)) * 3
    phi = means[labels] + rng.normal(size=(n, p)) @ np.diag(np.linspace(1.0, 0.2, p))
    weight = rng.normal(size=(c, p))
    return phi, phi @ weight.T, labels, weight


# -- labels ----------------------------------------------------------------------------------------
def test_two_percent_unlabelled_rows_leave_nc1_and_quality_at_their_labelled_values():
    phi, logits, labels, _ = labelled_problem(500, 12, 4, seed=0)
    messy = labels.copy()
    unlabelled = np.random.default_rng(1).choice(500, size=10, replace=False)
    messy[unlabelled] = -1
    phi[unlabelled] += 50.0  # far-away unlabelled rows: they must not move the label statistics
    keep = messy >= 0
    result = compute_dlr(phi, logits, labels=messy)
    assert result.nc1 == pytest.approx(bf.nc1(phi[keep], labels[keep]), rel=1e-9)
    np.testing.assert_allclose(result.quality, bf.quality(phi[keep], labels[keep], 4), atol=1e-9)
    assert result.accuracy == pytest.approx(np.mean(logits[keep].argmax(1) == labels[keep]))
    assert result.num_labelled == 490
    assert result.labels_dropped == {"unlabelled": 10, "out_of_range": 0, "not_integer": 0}
    # D_LR itself uses every row (SPEC §1: labels are not used by D_LR).
    assert result.dlr == pytest.approx(bf.dlr(phi, logits)[0], abs=1e-9)
    assert result.nc1_convention and "labelled" in result.nc1_convention


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(20, 80),
    p=st.integers(2, 10),
    c=st.integers(2, 5),
    seed=st.integers(0, 10_000),
    fraction=st.floats(0.0, 0.6),
    batch=st.integers(1, 32),
)
def test_property_label_statistics_equal_the_labelled_rows_alone(n, p, c, seed, fraction, batch):
    phi, logits, labels, _ = labelled_problem(n, p, c, seed)
    rng = np.random.default_rng(seed + 1)
    messy = labels.astype(np.float64)
    drop = rng.random(n) < fraction
    messy[drop] = rng.choice([-1, -100, c, c + 7, 1e9, 0.5, np.nan], size=int(drop.sum()))
    keep = ~drop
    if np.unique(labels[keep]).size < 2:
        return
    accumulator = DLRAccumulator()
    for start in range(0, n, batch):
        accumulator.update(phi[start : start + batch], logits[start : start + batch], messy[start : start + batch])
    result = accumulator.compute()
    present = np.unique(labels[keep])
    remap = np.searchsorted(present, labels[keep])
    assert result.nc1 == pytest.approx(bf.nc1(phi[keep], labels[keep]), rel=1e-7, abs=1e-9)
    np.testing.assert_allclose(result.quality, bf.quality(phi[keep], remap, present.size), atol=1e-8)
    assert result.num_labelled == int(keep.sum())
    assert sum(result.labels_dropped.values()) == int(drop.sum())


def test_clean_labels_share_the_all_rows_scatter():
    """Every row labelled: no second p×p scatter is kept (half the memory and scatter updates)."""
    phi, logits, labels, _ = labelled_problem(90, 6, 3, seed=11)
    accumulator = DLRAccumulator()
    for start in range(0, 90, 16):
        accumulator.update(phi[start : start + 16], logits[start : start + 16], labels[start : start + 16])
    assert accumulator.labels.features is None
    result = accumulator.compute()
    assert result.nc1 == pytest.approx(bf.nc1(phi, labels), rel=1e-9)
    np.testing.assert_allclose(result.quality, bf.quality(phi, labels, 3), atol=1e-9)


@pytest.mark.parametrize("order", ["unlabelled_first", "unlabelled_last", "interleaved"])
def test_batches_without_labels_are_left_out_of_the_label_statistics(order):
    """Batches passed with labels=None, before, after or between labelled ones: the label statistics
    are those of the labelled batches alone, D_LR that of every row."""
    phi, logits, labels, _ = labelled_problem(120, 6, 3, seed=12)
    batches = [slice(start, start + 20) for start in range(0, 120, 20)]
    without = {"unlabelled_first": {0, 1}, "unlabelled_last": {4, 5}, "interleaved": {1, 4}}[order]
    accumulator = DLRAccumulator()
    for index, rows in enumerate(batches):
        accumulator.update(phi[rows], logits[rows], None if index in without else labels[rows])
    keep = np.concatenate([np.full(20, index not in without) for index in range(len(batches))])
    result = accumulator.compute()
    assert result.num_labelled == int(keep.sum()) and result.num_samples == 120
    assert result.nc1 == pytest.approx(bf.nc1(phi[keep], labels[keep]), rel=1e-9)
    np.testing.assert_allclose(result.quality, bf.quality(phi[keep], labels[keep], 3), atol=1e-9)
    assert result.dlr == pytest.approx(bf.dlr(phi, logits)[0], abs=1e-9)


@pytest.mark.parametrize("first,second", [("clean", "messy"), ("messy", "clean"), ("clean", "none"), ("none", "clean"),
                                          ("empty", "messy"), ("clean", "clean")])
def test_merging_parts_labelled_differently_gives_the_labelled_rows_statistics(first, second):
    """A fully labelled part (one shared scatter) merged with a part holding unlabelled rows, or none:
    equal to the brute force on the labelled rows of both; the merged-in part is left as it was."""
    phi, logits, labels, _ = labelled_problem(160, 6, 3, seed=13)
    kinds = {"clean": lambda y: y, "messy": lambda y: np.where(np.arange(len(y)) % 4 == 0, -1, y), "none": lambda y: None}
    parts, kept = [], []
    for kind, rows in ((first, slice(0, 80)), (second, slice(80, 160))):
        part = DLRAccumulator(num_classes=3)
        if kind != "empty":
            part.update(phi[rows], logits[rows], kinds[kind](labels[rows]))
            given = kinds[kind](labels[rows])
            kept.append(np.zeros(80, bool) if given is None else np.asarray(given) >= 0)
        else:
            kept.append(np.zeros(80, bool))
        parts.append(part)
    if first == "empty":
        phi, logits, labels = phi[80:], logits[80:], labels[80:]
        kept = kept[1:]
    keep = np.concatenate(kept)
    source_before = parts[1].compute().to_dict()
    shared_before = parts[1].labels is not None and parts[1].labels.features is None
    parts[0].merge(parts[1])
    result = parts[0].compute()
    assert result.num_samples == len(phi) and result.num_labelled == int(keep.sum())
    assert result.nc1 == pytest.approx(bf.nc1(phi[keep], labels[keep]), rel=1e-9)
    np.testing.assert_allclose(result.quality, bf.quality(phi[keep], labels[keep], 3), atol=1e-9)
    assert parts[1].compute().to_dict() == source_before
    assert (parts[1].labels is not None and parts[1].labels.features is None) == shared_before


def test_bad_labels_are_counted_by_reason_and_reported():
    phi, logits, labels, _ = labelled_problem(40, 5, 3, seed=2)
    messy = labels.astype(np.float64)
    messy[:4] = [-100, 3, 2.5, np.nan]
    result = compute_dlr(phi, logits, labels=messy)
    assert result.labels_dropped == {"unlabelled": 1, "out_of_range": 1, "not_integer": 2}
    assert result.num_labelled == 36
    assert any("3 labels were not used" in warning for warning in result.warnings)


def test_a_huge_label_allocates_nothing_by_its_value():
    phi, logits, labels, _ = labelled_problem(30, 4, 3, seed=3)
    labels = labels.astype(np.int64)
    labels[0] = 10**9
    labels[1] = 2**62
    accumulator = DLRAccumulator()
    accumulator.update(phi, logits, labels)
    assert accumulator.labels.classes.counts.shape == (3,)
    assert accumulator.labels.classes.sums.shape == (3, 4)
    assert accumulator.compute().labels_dropped["out_of_range"] == 2


def test_labels_without_logits_need_the_number_of_classes():
    accumulator = DLRAccumulator(track_outputs=False)
    with pytest.raises(InvalidArgumentError, match="num_classes"):
        accumulator.update(np.random.default_rng(0).normal(size=(5, 3)), labels=np.arange(5) % 2)
    counted = DLRAccumulator(track_outputs=False, num_classes=2)
    counted.update(np.random.default_rng(0).normal(size=(6, 3)), labels=np.array([0, 1, 5, 0, 1, -1]))
    assert counted.labels.num_labelled == 4


# -- one state protocol ----------------------------------------------------------------------------
def test_every_streaming_statistic_shares_one_state_protocol():
    for cls in (DLRAccumulator, LinearCKAAccumulator, StreamingMoments, ClassMoments, LabelStatistics):
        assert issubclass(cls, MergeableState)


def test_state_dict_returns_copies():
    phi, logits, labels, _ = labelled_problem(40, 4, 3, seed=4)
    accumulator = DLRAccumulator()
    accumulator.update(phi, logits, labels)
    before = accumulator.compute().to_dict()
    state = accumulator.state_dict()
    state["children"]["moments"]["states"]["scatter"].zero_()
    state["children"]["labels"]["children"]["classes"]["states"]["counts"].zero_()
    assert accumulator.compute().to_dict() == before
    saved = accumulator.state_dict()
    accumulator.update(phi[:7] * 2, logits[:7], labels[:7])
    restored = DLRAccumulator()
    restored.load_state_dict(saved)
    assert restored.compute().to_dict() == before


def test_merging_into_an_empty_accumulator_does_not_alias_the_source():
    phi, logits, labels, _ = labelled_problem(60, 5, 3, seed=5)
    source = DLRAccumulator()
    source.update(phi, logits, labels)
    before = source.compute()
    merged = DLRAccumulator()
    merged.merge(source)
    merged.update(phi[:20] * 3 + 1, -logits[:20], (labels[:20] + 1) % 3)
    after = source.compute()
    assert (after.dlr, after.accuracy, after.nc1) == (before.dlr, before.accuracy, before.nc1)
    assert merged.num_samples == 80 and source.num_samples == 60


def test_linear_cka_merge_does_not_alias_and_reset_empties():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(30, 4)), rng.normal(size=(30, 3))
    source = LinearCKAAccumulator()
    source.update(a, b)
    before = source.compute()
    merged = LinearCKAAccumulator()
    merged.merge(source)
    merged.update(a * 5, b[:, ::-1].copy())
    assert source.compute() == before
    merged.reset()
    assert merged.num_samples == 0


def test_merge_of_mismatched_shapes_is_a_typed_error():
    first, second = DLRAccumulator(), DLRAccumulator()
    first.update(np.random.default_rng(0).normal(size=(5, 3)), np.random.default_rng(1).normal(size=(5, 2)))
    second.update(np.random.default_rng(0).normal(size=(5, 4)), np.random.default_rng(1).normal(size=(5, 2)))
    with pytest.raises(ShapeMismatchError):
        first.merge(second)


def test_all_reduce_agrees_on_shapes_before_any_data_collective():
    """With a sum over two identical "processes", a differing width is caught by the shape check."""
    accumulator = DLRAccumulator(num_classes=3, feature_dim=4, num_outputs=3)
    other_width = DLRAccumulator(num_classes=5, feature_dim=4, num_outputs=3)
    calls: list[int] = []

    def pretend_sum(tensor: torch.Tensor) -> torch.Tensor:
        # Two processes: this one and `other_width`, whose signature differs only in label classes.
        calls.append(tensor.numel())
        signature = torch.tensor([float(v) for v in other_width.signature().values()], dtype=torch.float64)
        other = torch.cat([torch.ones(1, dtype=torch.float64), signature, signature**2])
        return tensor + other

    with pytest.raises(ShapeMismatchError, match="label_classes"):
        accumulator.all_reduce(pretend_sum)
    assert calls == [1 + 2 * 4]  # only the shape signature was reduced


# -- undefined cases -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constant_features_up_to_rounding_are_undefined_on_both_paths(dtype):
    n, p = 300, 6
    phi = torch.full((n, p), 0.1, dtype=dtype)
    weight = torch.randn(3, p, dtype=dtype)
    logits = torch.randn(n, 3, dtype=dtype)
    moments_path = DLRAccumulator()
    for start in range(0, n, 37):
        moments_path.update(phi[start : start + 37], logits[start : start + 37])
    scatter = moments_path.moments.scatter[:p, :p]
    assert float(scatter.abs().max()) < 1e-25  # rounding, not zero
    with pytest.raises(UndefinedDLRError, match="constant"):
        moments_path.compute()
    head_path = DLRAccumulator(track_outputs=False)
    for start in range(0, n, 37):
        head_path.update(phi[start : start + 37])
    with pytest.raises(UndefinedDLRError, match="constant"):
        head_path.compute(head_weight=weight)


def test_small_but_real_spread_on_a_huge_mean_is_still_measured():
    rng = np.random.default_rng(7)
    phi = (1e4 + 1e-2 * rng.normal(size=(200, 5))).astype(np.float32)
    weight = rng.normal(size=(2, 5))
    result = DLRAccumulator(track_outputs=False)
    result.update(phi)
    value = result.compute(head_weight=weight)
    expected, rank = bf.dlr(phi.astype(np.float64), phi.astype(np.float64) @ weight.T)
    assert value.rank == rank == 2
    assert value.dlr == pytest.approx(expected, abs=1e-6)


def test_constant_outputs_are_undefined():
    phi = np.random.default_rng(8).normal(size=(50, 4))
    logits = np.full((50, 3), 0.7, dtype=np.float32)
    with pytest.raises(UndefinedDLRError, match="outputs are constant"):
        compute_dlr(phi, logits)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_head_reading_only_directions_the_features_never_vary_in_is_undefined(dtype):
    n, p = 200, 8
    phi = torch.zeros(n, p, dtype=dtype)
    phi[:, :3] = torch.randn(n, 3, dtype=dtype)  # features vary in 3 directions
    phi[:, 3:] = 0.3  # and are constant in the others
    weight = torch.zeros(4, p, dtype=dtype)
    weight[:, 3:] = torch.randn(4, p - 3, dtype=dtype)  # the head reads only the constant ones
    bias = torch.randn(4, dtype=dtype)
    head_path = DLRAccumulator(track_outputs=False)
    head_path.update(phi)
    with pytest.raises(UndefinedDLRError, match="outputs are constant"):
        head_path.compute(head_weight=weight)
    with pytest.raises(UndefinedDLRError, match="outputs are constant"):
        compute_dlr(phi, phi @ weight.T + bias)


def test_rounding_noise_directions_do_not_count_as_rank_on_the_head_path():
    """Features of rank 3 (plus rounding): the head path's r is capped at the feature rank."""
    rng = np.random.default_rng(9)
    phi = (rng.normal(size=(300, 3)) @ rng.normal(size=(3, 10))).astype(np.float32)
    weight = rng.normal(size=(6, 10))
    accumulator = DLRAccumulator(track_outputs=False)
    accumulator.update(phi)
    result = accumulator.compute(head_weight=weight)
    assert result.feature_rank == 3
    assert result.rank == 3
    expected, _ = bf.dlr(phi.astype(np.float64), phi.astype(np.float64) @ weight.T, rtol=1e-5)
    assert result.dlr == pytest.approx(expected, abs=1e-6)


# -- rtol, overflow, bad settings ------------------------------------------------------------------
@pytest.mark.parametrize("rtol", [0.0, 1e-12, 1e-9, 1.0, 2.0, -1e-6, float("nan"), float("inf"), "1e-6", True])
def test_out_of_range_rtol_is_a_typed_error(rtol):
    with pytest.raises(InvalidArgumentError, match="rtol"):
        DLRAccumulator(rtol=rtol)
    with pytest.raises(InvalidArgumentError, match="rtol"):
        compute_dlr(np.eye(3), np.eye(3), rtol=rtol)


def test_the_smallest_allowed_rtol_resolves_what_it_promises():
    """Singular values 1 and 1e-7 of Y_c: rank 2 at rtol 1e-8, rank 1 at the default 1e-6."""
    rng = np.random.default_rng(10)
    basis, _ = np.linalg.qr(rng.normal(size=(40, 2)))
    basis -= basis.mean(axis=0)
    basis, _ = np.linalg.qr(basis)
    phi = rng.normal(size=(40, 6))
    logits = basis @ np.diag([1.0, 1e-7])
    assert compute_dlr(phi, logits, rtol=1e-8).rank == 2 == bf.dlr(phi, logits, rtol=1e-8)[1]
    assert compute_dlr(phi, logits).rank == 1


def test_overflowing_inputs_are_refused_before_they_corrupt_the_sums():
    accumulator = DLRAccumulator()
    accumulator.update(np.random.default_rng(0).normal(size=(5, 3)), np.random.default_rng(1).normal(size=(5, 2)))
    huge = np.random.default_rng(2).normal(size=(5, 3)) * 1e155
    with pytest.raises(NonFiniteError, match="overflow"):
        accumulator.update(huge, np.ones((5, 2)))
    assert accumulator.num_samples == 5
    assert torch.isfinite(accumulator.moments.scatter).all()
    with pytest.raises(NonFiniteError, match="overflow"):
        LinearCKAAccumulator().update(huge, huge)


def test_nan_head_weight_is_a_typed_error():
    accumulator = DLRAccumulator(track_outputs=False)
    accumulator.update(np.random.default_rng(0).normal(size=(20, 4)))
    weight = np.random.default_rng(1).normal(size=(3, 4))
    weight[1, 2] = np.nan
    with pytest.raises(NonFiniteError, match="1 non-finite"):
        accumulator.compute(head_weight=weight)


@pytest.mark.parametrize("device", ["gpu0", "cuda-1", "nonsense"])
def test_unknown_device_string_is_a_typed_error(device):
    with pytest.raises(InvalidArgumentError, match="device"):
        DLRAccumulator(device=device)
    with pytest.raises(InvalidArgumentError, match="device"):
        LinearCKAAccumulator(device=device)


@pytest.mark.parametrize("name,value", [("num_classes", 0), ("num_classes", -3), ("feature_dim", 0), ("num_classes", 2.5)])
def test_bad_shape_settings_are_typed_errors(name, value):
    with pytest.raises(InvalidArgumentError, match=name):
        DLRAccumulator(**{name: value, "num_outputs": 2} if name == "feature_dim" else {name: value})


def test_linear_cka_of_a_constant_feature_set_is_undefined():
    rng = np.random.default_rng(11)
    cka = LinearCKAAccumulator()
    cka.update(np.full((50, 16), 0.1, dtype=np.float32), rng.normal(size=(50, 4)))
    with pytest.raises(UndefinedDLRError, match="constant"):
        cka.compute()
    a, b = rng.normal(size=(60, 5)), rng.normal(size=(60, 3))
    real = LinearCKAAccumulator()
    real.update(a, b)
    ac, bc = bf.centre(a), bf.centre(b)
    expected = np.linalg.norm(ac.T @ bc) ** 2 / (np.linalg.norm(ac.T @ ac) * np.linalg.norm(bc.T @ bc))
    assert real.compute() == pytest.approx(expected, rel=1e-12)


def test_two_classes_nc1_and_quality_against_brute_force():
    phi, logits, labels, _ = labelled_problem(120, 7, 2, seed=12)
    result = compute_dlr(phi, logits, labels=labels)
    assert result.nc1 == pytest.approx(bf.nc1(phi, labels), rel=1e-9)
    np.testing.assert_allclose(result.quality, bf.quality(phi, labels, 2), atol=1e-9)


@pytest.mark.slow
def test_a_4096_wide_head_path_matches_the_brute_force():
    rng = np.random.default_rng(13)
    n, p, c = 6000, 4096, 10
    phi = rng.normal(size=(n, 64)) @ rng.normal(size=(64, p)) + 0.1 * rng.normal(size=(n, p))
    weight = rng.normal(size=(c, p))
    accumulator = DLRAccumulator(track_outputs=False)
    for start in range(0, n, 1000):
        accumulator.update(phi[start : start + 1000])
    result = accumulator.compute(head_weight=weight)
    expected, rank = bf.dlr(phi, phi @ weight.T)
    assert result.rank == rank
    assert result.dlr == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_parameter_norm_keeps_float64_precision_on_large_parameters(dtype):
    from torch import nn

    from dlr_hf.metric import parameter_norm

    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(30_000, 64), nn.Linear(64, 3))
    model.to(dtype)
    exact = sum(float((param.detach().double() ** 2).sum()) for param in model.parameters())
    assert parameter_norm(model) == pytest.approx(exact, rel=1e-7)


def test_cka_splits_into_alignment_and_ceiling():
    """1 − D_LR = alignment × ceiling; isotropic features: ceiling √(C/p), alignment 1 (SPEC §2)."""
    phi, logits, _, _ = labelled_problem(300, 12, 4, seed=14)
    result = compute_dlr(phi, logits)
    assert result.alignment * result.ceiling == pytest.approx(1 - result.dlr, abs=1e-12)
    rho = np.asarray(result.spectrum)
    assert result.ceiling == pytest.approx(rho[:4].sum() / (2 * np.linalg.norm(rho)), rel=1e-12)
    basis, _ = np.linalg.qr(np.random.default_rng(15).normal(size=(200, 16)))
    isotropic = bf.centre(basis)
    isotropic, _ = np.linalg.qr(isotropic)
    weight = np.random.default_rng(16).normal(size=(4, 16))
    accumulator = DLRAccumulator(track_outputs=False)
    accumulator.update(isotropic)
    value = accumulator.compute(head_weight=weight)
    assert value.ceiling == pytest.approx(np.sqrt(4 / 16), rel=1e-9)
    assert value.alignment == pytest.approx(1.0, rel=1e-9)
