"""Gradient aggregators: the min-norm (GRASP) properties, checked on random gradients with hypothesis."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from flexmarl.algorithms import GRADIENT_AGGREGATORS
from flexmarl.algorithms.aggregators import min_norm_weights

SETTINGS = settings(max_examples=100, deadline=None)


@st.composite
def gradient_sets(draw, max_agents: int = 8):
    n = draw(st.integers(1, max_agents))
    p = draw(st.integers(1, 20))
    values = draw(arrays(np.float64, (n, p), elements=st.floats(-10, 10, allow_nan=False, width=64)))
    return torch.from_numpy(values)


def _consensus(grads: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    alpha = min_norm_weights(grads @ grads.T, **kwargs)
    return alpha, alpha @ grads


def _tol(grads: torch.Tensor, scale: float) -> float:
    return scale * (1.0 + float(grads.pow(2).sum(1).max()))


@SETTINGS
@given(gradient_sets(max_agents=6))
def test_exact_solution_is_in_the_hull_and_no_agent_is_worse_off(grads):
    alpha, u = _consensus(grads)
    assert (alpha >= 0).all() and abs(float(alpha.sum()) - 1.0) < 1e-9
    assert (grads @ u >= u @ u - _tol(grads, 1e-7)).all()


@SETTINGS
@given(gradient_sets(max_agents=8))
def test_frank_wolfe_solution_has_the_same_property(grads):
    alpha, u = _consensus(grads, exact_max_agents=0)
    assert (alpha >= 0).all() and abs(float(alpha.sum()) - 1.0) < 1e-9
    assert (grads @ u >= u @ u - _tol(grads, 1e-6)).all()


@SETTINGS
@given(gradient_sets(max_agents=6), st.lists(st.floats(0.01, 1.0), min_size=8, max_size=8))
def test_no_convex_combination_is_shorter(grads, raw_weights):
    _, u = _consensus(grads)
    other = torch.tensor(raw_weights[: len(grads)], dtype=torch.float64)
    v = (other / other.sum()) @ grads
    assert float(u.norm()) <= float(v.norm()) + 1e-6 * (1.0 + float(v.norm()))


@SETTINGS
@given(arrays(np.float64, st.integers(1, 20), elements=st.floats(-10, 10, allow_nan=False, width=64)),
       st.integers(1, 8))
def test_identical_gradients_give_that_gradient(g, n):
    grads = torch.from_numpy(np.tile(g, (n, 1)))
    _, u = _consensus(grads)
    assert torch.allclose(u, grads[0], atol=1e-9)
    direction, _ = GRADIENT_AGGREGATORS["grasp"](grads, torch.full((n,), 1.0 / n, dtype=torch.float64))
    assert torch.allclose(direction, grads[0], atol=1e-7)


def test_orthogonal_unit_gradients_split_evenly():
    alpha, _ = _consensus(torch.eye(2, dtype=torch.float64))
    assert torch.allclose(alpha, torch.tensor([0.5, 0.5], dtype=torch.float64))


@pytest.mark.parametrize("exact_max_agents", [6, 0])
def test_zero_gradients_give_zero_without_nan(exact_max_agents):
    grads = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]], dtype=torch.float64)
    _, u = _consensus(grads, exact_max_agents=exact_max_agents)
    assert torch.allclose(u, torch.zeros(2, dtype=torch.float64), atol=1e-9)
    zeros = torch.zeros(3, 4)
    direction, info = GRADIENT_AGGREGATORS["grasp"](zeros, torch.full((3,), 1 / 3))
    assert torch.equal(direction, torch.zeros(4)) and all(np.isfinite(v) for v in info.values())


@SETTINGS
@given(arrays(np.float64, 5, elements=st.floats(-10, 10, allow_nan=False, width=64)).filter(lambda g: np.abs(g).max() > 1e-3),
       st.lists(st.floats(0.1, 5.0), min_size=2, max_size=6))
def test_colinear_gradients(g, scales):
    g = torch.from_numpy(g)
    same_side = torch.stack([c * g for c in scales])
    _, u = _consensus(same_side)
    assert torch.allclose(u, min(scales) * g, atol=1e-6 * (1 + float(g.norm())))  # the shortest one
    opposed = torch.cat([same_side, -same_side[:1]])
    _, u = _consensus(opposed)
    assert float(u.norm()) <= 1e-6 * (1 + float(g.norm()))  # 0 is in the hull


@SETTINGS
@given(gradient_sets(max_agents=6))
def test_every_aggregator_returns_a_finite_direction_and_float_info(grads):
    weights = torch.full((len(grads),), 1.0 / len(grads), dtype=torch.float64)
    for name, aggregate in GRADIENT_AGGREGATORS.items():
        direction, info = aggregate(grads, weights)
        assert direction.shape == grads.shape[1:] and torch.isfinite(direction).all(), name
        assert all(isinstance(v, float) and np.isfinite(v) for v in info.values()), name


@SETTINGS
@given(gradient_sets(max_agents=6))
def test_mean_pcgrad_and_cagrad(grads):
    weights = torch.rand(len(grads), dtype=torch.float64) + 0.1
    weights /= weights.sum()
    mean, _ = GRADIENT_AGGREGATORS["mean"](grads, weights)
    assert torch.allclose(mean, weights @ grads)
    if bool(((grads @ grads.T) >= 0).all()):  # no conflicts: PCGrad changes nothing
        assert torch.allclose(GRADIENT_AGGREGATORS["pcgrad"](grads, weights)[0], mean)
    if float(mean.norm()) > 1e-3:
        direction, _ = GRADIENT_AGGREGATORS["cagrad"](grads, weights)
        assert float(direction @ mean) > 0
