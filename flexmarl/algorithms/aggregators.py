"""Gradient aggregators: combine per-agent gradients of a shared actor into one update direction.

Contract of every registered aggregator:
    fn(grads [N, P], weights [N]) -> (direction [P], info {name: float})
`grads[i]` is agent i's gradient of its own surrogate (mean over its samples); `weights` are the agents'
sample shares (sum 1). The direction is descended, like an ordinary gradient.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from flexmarl.algorithms.registry import register_gradient_aggregator

CAGRAD_C = 0.5
"""CAGrad's conflict-aversion radius c (Liu et al. 2021 use 0.5 for most tasks)."""


@register_gradient_aggregator("mean")
def mean(grads: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """The ordinary gradient of the summed loss (MAPPO/IPPO with parameter sharing)."""
    return weights.to(grads.dtype) @ grads, {}


def min_norm_weights(gram: torch.Tensor, exact_max_agents: int = 6, tol: float = 1e-10,
                     max_iters: int = 2000) -> torch.Tensor:
    """alpha* = argmin_{alpha in simplex} alpha^T M alpha, with M = G G^T (N x N, float64).

    Exact for N <= exact_max_agents (enumerate active sets, solve each KKT system); away-step Frank-Wolfe with
    exact line search otherwise (MGDA-UB style, Sener & Koltun 2018), stopped when the duality gap is below
    `tol` (relative to the largest squared gradient norm).
    """
    M = gram.to(torch.float64)
    n = M.shape[0]
    if n == 1:
        return torch.ones(1, dtype=torch.float64)
    if n <= exact_max_agents:
        return _exact_min_norm(M)
    return _frank_wolfe(M, tol, max_iters)


def _exact_min_norm(M: torch.Tensor) -> torch.Tensor:
    n = M.shape[0]
    scale = max(float(M.diagonal().max()), 1e-300)
    eps = 1e-9 * scale
    best, best_value = None, math.inf
    for size in range(1, n + 1):
        for support in itertools.combinations(range(n), size):
            idx = torch.tensor(support)
            kkt = torch.zeros(size + 1, size + 1, dtype=torch.float64)
            kkt[:size, :size] = M[idx][:, idx]
            kkt[:size, size] = 1.0
            kkt[size, :size] = 1.0
            rhs = torch.zeros(size + 1, dtype=torch.float64)
            rhs[size] = 1.0
            solution = torch.linalg.lstsq(kkt, rhs[:, None]).solution[:, 0]
            a = solution[:size]
            if (a < -1e-9).any() or abs(float(a.sum()) - 1.0) > 1e-6:
                continue
            alpha = torch.zeros(n, dtype=torch.float64)
            alpha[idx] = a.clamp(min=0.0)
            alpha /= alpha.sum()
            value = float(alpha @ M @ alpha)
            if ((M @ alpha) >= value - eps).all() and value < best_value:  # KKT optimality
                best, best_value = alpha, value
    return best if best is not None else _frank_wolfe(M, 1e-12, 10_000)


def _frank_wolfe(M: torch.Tensor, tol: float, max_iters: int) -> torch.Tensor:
    """Away-step Frank-Wolfe with exact line search (linear convergence on this QP; plain FW crawls)."""
    m = M.numpy()
    n = m.shape[0]
    tol = tol * (1.0 + float(np.max(np.diag(m))))
    alpha = np.full(n, 1.0 / n)
    for _ in range(max_iters):
        m_alpha = m @ alpha
        value = alpha @ m_alpha
        toward = int(np.argmin(m_alpha))
        if value - m_alpha[toward] <= tol:  # duality gap: no vertex lowers the objective to first order
            break
        support = np.flatnonzero(alpha > 0)
        away = int(support[np.argmax(m_alpha[support])])
        if value - m_alpha[toward] >= m_alpha[away] - value:
            direction, max_step = -alpha.copy(), 1.0
            direction[toward] += 1.0
        else:
            direction, max_step = alpha.copy(), alpha[away] / max(1.0 - alpha[away], 1e-300)
            direction[away] -= 1.0
        curvature = direction @ m @ direction
        slope = direction @ m_alpha
        step = max_step if curvature <= 0 else min(max(-slope / curvature, 0.0), max_step)
        alpha = np.clip(alpha + step * direction, 0.0, None)
        alpha /= alpha.sum()
    return torch.from_numpy(alpha)


def _cosine_min(grads: torch.Tensor) -> float:
    norms = grads.norm(dim=1)
    keep = norms > 0
    if keep.sum() < 2:
        return 1.0
    unit = grads[keep] / norms[keep, None]
    cos = unit @ unit.T
    return float(cos.masked_fill(torch.eye(len(cos), dtype=torch.bool), math.inf).min())


@register_gradient_aggregator("grasp")
def grasp(grads: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """GRASP consensus gradient (arXiv:2604.00717), in our reading of the paper's public description.

    The method section was not available to us. We take the consensus gradient to be the minimum-norm
    point u* of the convex hull of the agents' gradients (MGDA, Desideri 2012), so <g_i, u*> >= ||u*||^2
    for every agent: no agent's surrogate gets worse to first order. u* is rescaled to the norm of the
    ordinary (weighted mean) gradient so a learning rate means the same as in MAPPO; when the agents'
    gradients cancel (0 in the hull) the direction is zero.
    """
    g64 = grads.to(torch.float64)
    alpha = min_norm_weights(g64 @ g64.T)
    consensus = alpha @ g64
    mean_grad = weights.to(torch.float64) @ g64
    c_norm, m_norm = float(consensus.norm()), float(mean_grad.norm())
    if c_norm <= 1e-12 * max(m_norm, 1e-30) or c_norm == 0.0:
        direction = torch.zeros_like(consensus)
    else:
        direction = consensus * (m_norm / c_norm)
    entropy = float(-(alpha.clamp(min=1e-12).log() * alpha).sum())
    info = {"grasp/alpha_min": float(alpha.min()), "grasp/alpha_max": float(alpha.max()),
            "grasp/alpha_entropy": entropy, "grasp/cosine_min": _cosine_min(g64),
            "grasp/consensus_norm": c_norm, "grasp/mean_norm": m_norm}
    return direction.to(grads.dtype), info


@register_gradient_aggregator("pcgrad")
def pcgrad(grads: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """PCGrad (Yu et al. 2020, arXiv:2001.06782) with a fixed projection order (reproducible)."""
    n = grads.shape[0]
    projected = grads.clone()
    conflicts = 0
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            dot = projected[i] @ grads[j]
            if dot < 0:
                conflicts += 1
                projected[i] = projected[i] - dot / grads[j].pow(2).sum().clamp(min=1e-30) * grads[j]
    pairs = n * (n - 1)
    return weights.to(grads.dtype) @ projected, {"pcgrad/conflicts": conflicts / pairs if pairs else 0.0}


@register_gradient_aggregator("cagrad")
def cagrad(grads: torch.Tensor, weights: torch.Tensor, iters: int = 200) -> tuple[torch.Tensor, dict[str, float]]:
    """CAGrad (Liu et al. 2021, arXiv:2110.14048), c = CAGRAD_C, solved on the Gram matrix.

    w* = argmin_{w in simplex} <g_w, g0> + sqrt(phi) ||g_w||, phi = c^2 ||g0||^2;
    d = (g0 + sqrt(phi) / ||g_w|| g_w) / (1 + c).
    """
    g64 = grads.to(torch.float64)
    w0 = weights.to(torch.float64)
    M = g64 @ g64.T
    g0 = w0 @ g64
    g0_norm = float(g0.norm())
    if g0_norm == 0.0:
        return torch.zeros_like(grads[0]), {"cagrad/w_max": 0.0}
    sqrt_phi = CAGRAD_C * g0_norm
    Mg0 = M @ w0  # <g_i, g0>
    w = torch.full_like(w0, 1.0 / len(w0))
    for _ in range(iters):  # Frank-Wolfe on a convex objective over the simplex
        gw_norm = float((w @ M @ w).clamp(min=1e-30).sqrt())
        grad = Mg0 + sqrt_phi * (M @ w) / gw_norm
        vertex = int(torch.argmin(grad))
        step = 2.0 / (_ + 2.0)
        w = (1 - step) * w
        w[vertex] += step
    gw = w @ g64
    gw_norm = float(gw.norm())
    direction = g0 if gw_norm == 0.0 else g0 + sqrt_phi / gw_norm * gw
    return (direction / (1 + CAGRAD_C)).to(grads.dtype), {"cagrad/w_max": float(w.max())}
