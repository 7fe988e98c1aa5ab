"""Independent n×n reference implementations of SPEC §2–§4, in numpy, for the tests only."""

from __future__ import annotations

import numpy as np


def centre(x: np.ndarray) -> np.ndarray:
    return x - x.mean(axis=0)


def output_projector(y: np.ndarray, rtol: float = 1e-6) -> tuple[np.ndarray, int]:
    """P_Y, the n×n projector onto the column space of Y_c, and r = rank(Y_c)."""
    u, s, _ = np.linalg.svd(centre(y), full_matrices=False)
    rank = int((s > rtol * s.max()).sum()) if s.size and s.max() > 0 else 0
    return u[:, :rank] @ u[:, :rank].T, rank


def dlr(phi: np.ndarray, y: np.ndarray, rtol: float = 1e-6) -> tuple[float, int]:
    """D_LR = 1 − ⟨K, L⟩_F / (‖K‖_F ‖L‖_F) with K = Φ_cΦ_cᵀ, L = P_Y (SPEC §2)."""
    phi_c = centre(phi)
    kernel = phi_c @ phi_c.T
    projector, rank = output_projector(y, rtol)
    cka = np.sum(kernel * projector) / (np.linalg.norm(kernel) * np.linalg.norm(projector))
    return 1.0 - cka, rank


def eigen(phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ρ (descending) and V of the feature covariance S/n."""
    phi_c = centre(phi)
    values, vectors = np.linalg.eigh(phi_c.T @ phi_c / phi.shape[0])
    order = np.argsort(values)[::-1]
    return values[order], vectors[:, order]


def one_hot_centred(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return centre(np.eye(num_classes)[labels])


def nc1(phi: np.ndarray, labels: np.ndarray) -> float:
    """Papyan et al.: tr(Σ_W Σ_B⁺)/K with per-sample within-class and per-class between covariances."""
    classes = np.unique(labels)
    global_mean = phi.mean(axis=0)
    within = np.zeros((phi.shape[1], phi.shape[1]))
    between = np.zeros_like(within)
    for k in classes:
        members = phi[labels == k]
        dev = members - members.mean(axis=0)
        within += dev.T @ dev
        offset = members.mean(axis=0) - global_mean
        between += np.outer(offset, offset)
    within /= phi.shape[0]
    between /= len(classes)
    return float(np.trace(within @ np.linalg.pinv(between, rcond=1e-12, hermitian=True)) / len(classes))


def quality(phi: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Q(k) = Σ_{i≤k} ‖T_cᵀ e_i‖² / ‖T_c‖²_F with the n×n eigenfunctions e_i of Φ_c (SPEC §3)."""
    rho, vectors = eigen(phi)
    keep = rho > 1e-12 * rho.max()
    eigenfunctions = centre(phi) @ vectors[:, keep] / np.sqrt(phi.shape[0] * rho[keep])
    targets = one_hot_centred(labels, num_classes)
    per_direction = np.zeros_like(rho)
    per_direction[keep] = np.sum((targets.T @ eigenfunctions) ** 2, axis=0)
    return np.cumsum(per_direction) / np.sum(targets**2)
