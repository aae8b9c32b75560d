"""Gradient aggregators: the min-norm (GRASP) properties on random gradients (hypothesis), plus unit cases."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from flexmarl.algorithms import GRADIENT_AGGREGATORS, register_gradient_aggregator
from flexmarl.algorithms.aggregators import min_norm_weights

SETTINGS = settings(max_examples=100, deadline=None)
ENTRIES = st.floats(-10, 10, allow_nan=False, width=64)
PATHS = pytest.mark.parametrize("exact_max_agents", [6, 0], ids=["exact", "frank_wolfe"])


@st.composite
def gradient_sets(draw, max_agents: int = 8, min_agents: int = 1) -> torch.Tensor:
    n = draw(st.integers(min_agents, max_agents))
    p = draw(st.integers(1, 20))
    return torch.from_numpy(draw(arrays(np.float64, (n, p), elements=ENTRIES)))


@st.composite
def gradients_and_weights(draw, max_agents: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    grads = draw(gradient_sets(max_agents))
    raw = torch.tensor(draw(st.lists(st.floats(0.01, 1.0), min_size=len(grads), max_size=len(grads))),
                       dtype=torch.float64)
    return grads, raw / raw.sum()


def _consensus(grads: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    alpha = min_norm_weights(grads @ grads.T, **kwargs)
    return alpha, alpha @ grads


def _tol(grads: torch.Tensor, scale: float) -> float:
    return scale * (1.0 + float(grads.pow(2).sum(1).max()))


def _uniform(n: int) -> torch.Tensor:
    return torch.full((n,), 1.0 / n, dtype=torch.float64)


# --- min_norm_weights: the consensus u* = alpha @ G -------------------------------------------------------


@PATHS
@SETTINGS
@given(grads=gradient_sets())
def test_consensus_is_in_the_hull_and_no_agent_is_worse_off(grads, exact_max_agents):
    alpha, u = _consensus(grads, exact_max_agents=exact_max_agents)
    assert alpha.dtype == torch.float64
    assert (alpha >= 0).all() and abs(float(alpha.sum()) - 1.0) < 1e-9
    scale = 1e-6 if exact_max_agents else 1e-5  # Frank-Wolfe stops on a duality-gap tolerance
    assert (grads @ u >= u @ u - _tol(grads, scale)).all()


@SETTINGS
@given(grads=gradient_sets())
def test_exact_and_frank_wolfe_reach_the_same_minimum(grads):
    _, exact = _consensus(grads, exact_max_agents=8)
    _, frank_wolfe = _consensus(grads, exact_max_agents=0)
    assert abs(float(exact @ exact) - float(frank_wolfe @ frank_wolfe)) <= _tol(grads, 1e-6)


@SETTINGS
@given(grads=gradient_sets(), raw=st.lists(st.floats(0.0, 1.0), min_size=8, max_size=8).filter(any))
def test_no_convex_combination_is_shorter(grads, raw):
    _, u = _consensus(grads)
    other = torch.tensor(raw[: len(grads)], dtype=torch.float64)
    if float(other.sum()) == 0.0:
        other = _uniform(len(grads))
    v = (other / other.sum()) @ grads
    assert float(u @ u) <= float(v @ v) + _tol(grads, 1e-7)


@SETTINGS
@given(g=arrays(np.float64, st.integers(1, 20), elements=ENTRIES), n=st.integers(1, 8))
def test_identical_gradients_give_that_gradient(g, n):
    grads = torch.from_numpy(np.tile(g, (n, 1)))
    for exact_max_agents in (6, 0):
        _, u = _consensus(grads, exact_max_agents=exact_max_agents)
        assert torch.allclose(u, grads[0], atol=1e-9)
    direction, _ = GRADIENT_AGGREGATORS["grasp"](grads, _uniform(n))
    assert torch.allclose(direction, grads[0], atol=1e-7)


@PATHS
def test_orthogonal_unit_gradients_split_evenly(exact_max_agents):
    alpha, _ = _consensus(torch.eye(2, dtype=torch.float64), exact_max_agents=exact_max_agents)
    assert torch.allclose(alpha, torch.tensor([0.5, 0.5], dtype=torch.float64))


@PATHS
@SETTINGS
@given(grads=gradient_sets(min_agents=2), data=st.data())
def test_a_zero_gradient_makes_the_consensus_zero(grads, data, exact_max_agents):
    grads[data.draw(st.integers(0, len(grads) - 1))] = 0.0
    alpha, u = _consensus(grads, exact_max_agents=exact_max_agents)
    assert torch.isfinite(alpha).all() and abs(float(alpha.sum()) - 1.0) < 1e-9
    assert float(u.norm()) <= 1e-6 * (1.0 + float(grads.norm(dim=1).max()))


@pytest.mark.parametrize("n", [1, 3, 8])
def test_all_zero_gradients_give_zeros_without_nan(n):
    alpha = min_norm_weights(torch.zeros(n, n, dtype=torch.float64))
    assert torch.isfinite(alpha).all() and float(alpha.sum()) == pytest.approx(1.0)
    for name, aggregate in GRADIENT_AGGREGATORS.items():
        direction, info = aggregate(torch.zeros(n, 4), torch.full((n,), 1.0 / n))
        assert torch.equal(direction, torch.zeros(4)), name
        assert all(np.isfinite(v) for v in info.values()), name


@PATHS
@SETTINGS
@given(g=arrays(np.float64, 5, elements=ENTRIES).filter(lambda g: np.abs(g).max() > 1e-3),
       scales=st.lists(st.floats(0.1, 5.0), min_size=2, max_size=8))
def test_colinear_gradients(g, scales, exact_max_agents):
    g = torch.from_numpy(g)
    same_side = torch.stack([c * g for c in scales])
    _, u = _consensus(same_side, exact_max_agents=exact_max_agents)
    assert torch.allclose(u, min(scales) * g, atol=1e-6 * (1 + float(g.norm())))  # the shortest one
    mixed = torch.cat([same_side, -same_side[:1]])
    _, u = _consensus(mixed, exact_max_agents=exact_max_agents)
    assert float(u.norm()) <= 1e-6 * (1 + float(g.norm()))  # 0 is in the hull


# --- the aggregators --------------------------------------------------------------------------------------


def test_the_built_ins_are_registered_once():
    assert {"mean", "grasp", "pcgrad", "cagrad"} <= set(GRADIENT_AGGREGATORS)
    with pytest.raises(ValueError, match="already registered"):
        register_gradient_aggregator("mean")(lambda grads, weights: (grads[0], {}))


@SETTINGS
@given(gradients_and_weights())
def test_every_aggregator_returns_a_finite_direction_and_float_info(grads_weights):
    grads, weights = grads_weights
    for name, aggregate in GRADIENT_AGGREGATORS.items():
        direction, info = aggregate(grads, weights)
        assert direction.shape == grads.shape[1:] and direction.dtype == grads.dtype, name
        assert torch.isfinite(direction).all(), name
        assert all(isinstance(v, float) and np.isfinite(v) for v in info.values()), name


@pytest.mark.parametrize("name", ["mean", "grasp", "pcgrad", "cagrad"])
def test_float32_in_float32_out(name):
    grads = torch.tensor([[1.0, 2.0, 0.0], [-1.0, 1.0, 3.0], [0.5, 0.0, -1.0]])
    direction, _ = GRADIENT_AGGREGATORS[name](grads, torch.tensor([0.2, 0.3, 0.5]))
    assert direction.dtype == torch.float32 and direction.device == grads.device


@SETTINGS
@given(gradients_and_weights())
def test_mean_pcgrad_and_cagrad(grads_weights):
    grads, weights = grads_weights
    mean, info = GRADIENT_AGGREGATORS["mean"](grads, weights)
    assert torch.allclose(mean, weights @ grads) and info == {}
    if bool(((grads @ grads.T) >= 0).all()):  # no conflicts: PCGrad changes nothing
        direction, info = GRADIENT_AGGREGATORS["pcgrad"](grads, weights)
        assert torch.allclose(direction, mean) and info["pcgrad/conflicts"] == 0.0
    if float(mean.norm()) > 1e-3:  # <d, g0> >= (1 - c) ||g0||^2 / (1 + c) by Cauchy-Schwarz
        direction, _ = GRADIENT_AGGREGATORS["cagrad"](grads, weights)
        assert float(direction @ mean) > 0


@SETTINGS
@given(gradients_and_weights())
def test_grasp_direction_helps_every_agent_at_the_mean_step_size(grads_weights):
    grads, weights = grads_weights
    direction, info = GRADIENT_AGGREGATORS["grasp"](grads, weights)
    if info["grasp/zeroed"]:
        assert torch.equal(direction, torch.zeros_like(direction))
    else:
        assert (grads @ direction > 0).all()
        assert float(direction.norm()) == pytest.approx(info["grasp/mean_norm"], rel=1e-9)
    assert info["grasp/consensus_norm"] <= info["grasp/mean_norm"] + 1e-9 * (1 + info["grasp/mean_norm"])
    assert 0.0 <= info["grasp/alpha_min"] <= info["grasp/alpha_max"] <= 1.0
    assert -1.0 - 1e-9 <= info["grasp/cosine_min"] <= 1.0 + 1e-9


@SETTINGS
@given(grads=gradient_sets(min_agents=2), raw=st.lists(st.floats(0.1, 1.0), min_size=7, max_size=7))
def test_grasp_does_not_move_when_the_gradients_cancel(grads, raw):
    mix = torch.tensor(raw[: len(grads) - 1], dtype=torch.float64)
    grads[-1] = -(mix / mix.sum()) @ grads[:-1]  # 0 is in the hull; N = 7, 8 take the Frank-Wolfe path
    direction, info = GRADIENT_AGGREGATORS["grasp"](grads, _uniform(len(grads)))
    assert torch.equal(direction, torch.zeros_like(direction)) and info["grasp/zeroed"] == 1.0


def test_grasp_with_one_agent_is_the_plain_gradient():
    grads = torch.tensor([[3.0, -4.0]], dtype=torch.float64)
    direction, info = GRADIENT_AGGREGATORS["grasp"](grads, torch.ones(1, dtype=torch.float64))
    assert torch.allclose(direction, grads[0])
    assert info["grasp/cosine_min"] == 1.0 and info["grasp/alpha_min"] == info["grasp/alpha_max"] == 1.0


def test_grasp_rescales_the_consensus_to_the_mean_norm():
    grads = torch.eye(2, dtype=torch.float64)  # u* = (0.5, 0.5); weighted mean (0.8, 0.2)
    direction, info = GRADIENT_AGGREGATORS["grasp"](grads, torch.tensor([0.8, 0.2], dtype=torch.float64))
    mean_norm = float(torch.tensor([0.8, 0.2]).norm())
    assert torch.allclose(direction, torch.full((2,), mean_norm / 2**0.5, dtype=torch.float64))
    assert info["grasp/consensus_norm"] == pytest.approx(0.5**0.5)
    assert info["grasp/cosine_min"] == pytest.approx(0.0)


def test_pcgrad_worked_example():
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)  # <g0, g1> = -1
    # g0 -> g0 + g1 / 2 = (0.5, 0.5); g1 -> g1 + g0 = (0, 1) (projected on the original g0)
    direction, info = GRADIENT_AGGREGATORS["pcgrad"](grads, _uniform(2))
    assert torch.allclose(direction, torch.tensor([0.25, 0.75], dtype=torch.float64))
    assert info["pcgrad/conflicts"] == 1.0


@SETTINGS
@given(g=arrays(np.float64, st.integers(1, 20), elements=ENTRIES), n=st.integers(1, 8))
def test_cagrad_of_identical_gradients_is_that_gradient(g, n):
    grads = torch.from_numpy(np.tile(g, (n, 1)))  # d = (g + c g) / (1 + c)
    direction, _ = GRADIENT_AGGREGATORS["cagrad"](grads, _uniform(n))
    assert torch.allclose(direction, grads[0], atol=1e-9)
