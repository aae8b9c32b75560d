"""Gradient aggregators: combine per-agent gradients of a shared actor into one update direction.

Contract of every registered aggregator:
    fn(grads [N, P], weights [N]) -> (direction [P], info {name: float})
`grads[i]` is agent i's gradient of its own surrogate (mean over its samples); `weights` are the agents'
sample shares (sum 1). The direction is descended like an ordinary gradient and has the dtype and device
of `grads`. The solvers only see the N x N Gram matrix in float64: N is small, P can be millions.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch


CAGRAD_C = 0.5
"""CAGrad's conflict-aversion radius c (Liu et al. 2021 use 0.5 for most tasks)."""
CAGRAD_ITERS = 200
"""Frank-Wolfe iterations for CAGrad's N-dimensional subproblem."""
_ZERO_RTOL = 1e-9
"""GRASP: a consensus whose worst alignment min_i <g_i, u> is below this (relative) counts as zero."""


def _gram(grads: torch.Tensor) -> np.ndarray:
    """G G^T in float64 on the CPU, divided by the largest squared norm (every solver here is scale-free)."""
    g64 = grads.detach().to(torch.float64)
    gram = (g64 @ g64.T).cpu().numpy()
    scale = gram.diagonal().max(initial=0.0)
    return gram / scale if scale > 0 else gram


def _numpy(weights: torch.Tensor) -> np.ndarray:
    return weights.detach().to("cpu", torch.float64).numpy()


def _mix(coefficients: np.ndarray, grads: torch.Tensor) -> torch.Tensor:
    """sum_i coefficients_i * grads_i, in the dtype and on the device of grads."""
    return torch.from_numpy(coefficients).to(grads) @ grads


def mean(grads: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """The ordinary gradient of the summed loss (MAPPO/IPPO with parameter sharing)."""
    return weights.to(grads) @ grads, {}


def min_norm_weights(gram: torch.Tensor, exact_max_agents: int = 6, tol: float = 1e-10,
                     max_iters: int = 500) -> torch.Tensor:
    """alpha* = argmin_{alpha in simplex} alpha^T M alpha for the Gram matrix M = G G^T (float64, M's device).

    Exact for N <= exact_max_agents (closed form for N = 2, else enumeration of the active sets). For more
    agents, Wolfe's min-norm-point algorithm (1976), i.e. fully-corrective Frank-Wolfe, stopped when the
    Frank-Wolfe duality gap max_i (alpha^T M alpha - (M alpha)_i) <= tol * max_i M_ii or after max_iters.
    """
    m = gram.detach().to("cpu", torch.float64).numpy()
    scale = m.diagonal().max(initial=0.0)
    m = m / scale if scale > 0 else m  # tolerances below are relative to the longest gradient
    n = len(m)
    if n == 1:
        alpha = np.ones(1)
    elif n <= exact_max_agents:
        alpha = _two_points(m) if n == 2 else _enumerate_active_sets(m)
    else:
        alpha = _wolfe(m, tol, max_iters)
    return torch.from_numpy(alpha).to(gram.device)


def _two_points(m: np.ndarray) -> np.ndarray:
    """Closed form: the point of the segment [g_1, g_0] nearest to 0."""
    diff = m[0, 0] + m[1, 1] - 2.0 * m[0, 1]  # ||g_0 - g_1||^2
    a = 0.5 if diff <= 0 else float(np.clip((m[1, 1] - m[0, 1]) / diff, 0.0, 1.0))
    return np.array([a, 1.0 - a])


def _affine_minimiser(m: np.ndarray) -> np.ndarray:
    """Weights (sum 1) of the min-norm point of the affine hull of the points with Gram matrix m.

    KKT system [m 1; 1^T 0][a; -lam] = [0; 1]; least squares copes with colinear (singular) point sets.
    """
    k = len(m)
    kkt = np.ones((k + 1, k + 1))
    kkt[:k, :k] = m
    kkt[k, k] = 0.0
    rhs = np.zeros(k + 1)
    rhs[k] = 1.0
    return np.linalg.lstsq(kkt, rhs, rcond=None)[0][:k]


def _enumerate_active_sets(m: np.ndarray, eps: float = 1e-9) -> np.ndarray:
    """Solve the KKT system on every support; keep the feasible, optimal one with the smallest objective."""
    n = len(m)
    best, best_value = None, math.inf
    for size in range(1, n + 1):
        for support in itertools.combinations(range(n), size):
            idx = list(support)
            a = _affine_minimiser(m[np.ix_(idx, idx)])
            if a.min() < -eps or abs(a.sum() - 1.0) > 1e-6:
                continue
            alpha = np.zeros(n)
            alpha[idx] = np.clip(a, 0.0, None)
            alpha /= alpha.sum()
            m_alpha = m @ alpha
            value = float(alpha @ m_alpha)
            if m_alpha.min() >= value - eps and value < best_value:  # optimal: no vertex lowers the objective
                best, best_value = alpha, value
    return best if best is not None else _wolfe(m, 1e-12, 10_000)  # only if rounding rejected every support


def _wolfe(m: np.ndarray, tol: float, max_iters: int) -> np.ndarray:
    """Wolfe's min-norm-point algorithm on the Gram matrix.

    Plain Frank-Wolfe (even with away steps and exact line search) crawls when 0 is in or near the hull,
    and ||u*|| is the square root of the objective, so its errors show; re-solving exactly on the current
    support ("corral") after each Frank-Wolfe vertex terminates finitely.
    """
    n = len(m)
    corral, lam = [int(np.argmin(m.diagonal()))], np.ones(1)
    for _ in range(max_iters):
        m_alpha = m[:, corral] @ lam  # <g_i, u> for every i
        value = float(lam @ m_alpha[corral])
        vertex = int(np.argmin(m_alpha))
        if value - m_alpha[vertex] <= tol or vertex in corral:  # duality gap closed (or rounding stalls it)
            break
        corral.append(vertex)
        lam = np.append(lam, 0.0)
        while True:  # minor cycle: walk toward the corral's affine minimiser, dropping points it leaves behind
            beta = _affine_minimiser(m[np.ix_(corral, corral)])
            if beta.min() > -1e-12:
                lam = np.clip(beta, 0.0, None) / np.clip(beta, 0.0, None).sum()
                break
            negative = np.flatnonzero(beta <= -1e-12)
            ratios = lam[negative] / (lam[negative] - beta[negative])
            lam = lam + ratios.min() * (beta - lam)
            keep = lam > 1e-12
            keep[negative[np.argmin(ratios)]] = False  # the blocking point leaves, whatever the rounding
            corral = [c for c, k in zip(corral, keep) if k]
            lam = lam[keep] / lam[keep].sum()
    alpha = np.zeros(n)
    alpha[corral] = lam
    return alpha


def _cosine_min(m: np.ndarray) -> float:
    """Smallest pairwise cosine between nonzero gradients (1.0 when fewer than two)."""
    norms = np.sqrt(m.diagonal())
    keep = norms > 0
    if keep.sum() < 2:
        return 1.0
    cos = m[np.ix_(keep, keep)] / np.outer(norms[keep], norms[keep])
    return float(cos[~np.eye(len(cos), dtype=bool)].min())


def grasp(grads: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """GRASP consensus gradient (arXiv:2604.00717, "Gradient Realignment via Active Shared Perception").

    The paper's method section was not available to us: this minimum-norm-point formulation is our reading
    of its public description. The consensus gradient is the min-norm point u* of the convex hull of the
    agents' gradients (MGDA, Desideri 2012), so <g_i, u*> >= ||u*||^2 for every agent: no agent's surrogate
    gets worse to first order. u* is rescaled to the norm of the sample-weighted mean gradient, so a learning
    rate means what it means for MAPPO; when the gradients cancel (0 in the hull) the direction is zero.
    """
    g64 = grads.detach().to(torch.float64)
    gram = _gram(g64)
    alpha = min_norm_weights(torch.from_numpy(gram)).numpy()
    consensus = _mix(alpha, g64)
    mean_grad = weights.to(g64) @ g64
    c_norm, m_norm = float(consensus.norm()), float(mean_grad.norm())
    # u* != 0 exactly when it helps every agent (<g_i, u*> > 0): that sign test is scale-free and survives
    # the solver's rounding, where noise of norm ~1e-8 max ||g_i|| rescaled to the mean's norm would not.
    alignment = float((g64 @ consensus).min())
    zeroed = alignment <= _ZERO_RTOL * c_norm * float(g64.norm(dim=1).max())
    direction = torch.zeros_like(consensus) if zeroed else consensus * (m_norm / c_norm)
    nonzero = alpha[alpha > 0]
    info = {
        "grasp/alpha_min": float(alpha.min()),
        "grasp/alpha_max": float(alpha.max()),
        "grasp/alpha_entropy": float(-(nonzero * np.log(nonzero)).sum()),
        "grasp/cosine_min": _cosine_min(gram),
        "grasp/consensus_norm": c_norm,
        "grasp/mean_norm": m_norm,
        "grasp/zeroed": float(zeroed),
    }
    return direction.to(grads.dtype), info


def pcgrad(grads: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """PCGrad (Yu et al. 2020, arXiv:2001.06782) in a fixed projection order j = 0..N-1 (reproducible).

    g_i is projected onto the normal plane of each g_j it still conflicts with; the projected gradients are
    summed with the sample weights. Worked in coefficient space (projected_i = coef[i] @ grads) on the Gram
    matrix, so no P-sized vector is touched until the final sum.
    """
    m = _gram(grads)
    n = len(m)
    coef = np.eye(n)
    for i in range(n):
        for j in range(n):
            dot = coef[i] @ m[:, j]  # <projected_i, g_j>
            if j != i and dot < 0 and m[j, j] > 0:  # m[j, j] underflows only for a negligible g_j
                coef[i, j] -= dot / m[j, j]
    pairs = n * (n - 1) // 2
    conflicts = float((m[np.triu_indices(n, 1)] < 0).sum()) / pairs if pairs else 0.0
    return _mix(_numpy(weights) @ coef, grads), {"pcgrad/conflicts": conflicts}


def cagrad(grads: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """CAGrad (Liu et al. 2021, arXiv:2110.14048) with c = CAGRAD_C, solved on the Gram matrix.

    g0 = weighted mean, phi = c^2 ||g0||^2, w* = argmin_{w in simplex} <g_w, g0> + sqrt(phi) ||g_w||,
    d = (g0 + sqrt(phi) / ||g_w|| g_w) / (1 + c) (the paper's rescaling).
    """
    m, w0 = _gram(grads), _numpy(weights)
    m_g0 = m @ w0  # <g_i, g0>
    g0_sq = float(w0 @ m_g0)
    if g0_sq <= 0:
        return torch.zeros_like(grads[0]), {"cagrad/w_max": 0.0}
    sqrt_phi = CAGRAD_C * math.sqrt(g0_sq)
    w = np.full(len(w0), 1.0 / len(w0))
    for k in range(CAGRAD_ITERS):  # Frank-Wolfe: the objective is convex on the simplex
        gw_norm = math.sqrt(max(float(w @ m @ w), 1e-300))
        vertex = int(np.argmin(m_g0 + sqrt_phi * (m @ w) / gw_norm))
        step = 2.0 / (k + 2.0)
        w *= 1.0 - step
        w[vertex] += step
    gw_sq = float(w @ m @ w)
    mix = w0 + sqrt_phi / math.sqrt(gw_sq) * w if gw_sq > 0 else w0
    return _mix(mix / (1.0 + CAGRAD_C), grads), {"cagrad/w_max": float(w.max())}
