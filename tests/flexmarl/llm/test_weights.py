"""Weights between trainers and engines (flexmarl/llm/weights.py): names, checks, the disk round-trip."""

from __future__ import annotations

import pytest
import torch

from flexmarl.llm.weights import (checkpoint_layout, engine_weights, layout_problems, read_weights,
                                  save_weights, ties_embeddings, value_problems)


@pytest.fixture(scope="module")
def tied_dir(tmp_path_factory):
    from tests.flexmarl.llm.test_engine import build_tied_model

    return build_tied_model(tmp_path_factory.mktemp("tied") / "model")


def test_a_trainer_state_dict_becomes_the_checkpoint_layout(tied_dir):
    from flexmarl.llm.models import load_causal_lm

    model = load_causal_lm(tied_dir)
    state = model.state_dict()
    assert "lm_head.weight" in state and ties_embeddings(tied_dir)
    weights = engine_weights(state, tied_dir)
    layout = checkpoint_layout(tied_dir)
    assert "lm_head.weight" not in weights and set(weights) == set(layout)
    assert layout_problems({n: tuple(t.shape) for n, t in weights.items()}, layout) == []
    assert all(t.dtype == torch.float32 and t.is_contiguous() and t.device.type == "cpu" for t in weights.values())
    assert weights["model.norm.weight"].data_ptr() == state["model.norm.weight"].data_ptr()  # no copy on CPU fp32


def test_layout_and_value_problems_are_named():
    expected = {"a": (2, 3), "b": (4,), "c": (1,)}
    problems = layout_problems({"a": (3, 2), "b": (4,), "z": (1,)}, expected)
    assert problems == ["1 missing tensors (e.g. c)", "1 unexpected tensors (e.g. z)",
                        "a has shape [3, 2], the model needs [2, 3]"]
    bad = {"ok": torch.zeros(2), "nan": torch.tensor([1.0, float("nan")]), "inf": torch.tensor([float("inf")]),
           "int": torch.zeros(2, dtype=torch.long)}
    assert value_problems(bad) == ["nan holds NaN or inf", "inf holds NaN or inf",
                                   "int has dtype torch.int64, not floating point"]


def test_disk_round_trip_is_exact(tmp_path):
    weights = {"x.weight": torch.randn(3, 5), "y.bias": torch.randn(7)}
    back = read_weights(save_weights(weights, tmp_path / "w"))
    assert set(back) == set(weights) and all(torch.equal(back[n], weights[n]) for n in weights)
    assert checkpoint_layout(tmp_path / "w") == {"x.weight": (3, 5), "y.bias": (7,)}
    save_weights({"z": torch.ones(1)}, tmp_path / "two")
    assert set(read_weights(tmp_path / "two")) == {"z"}
    with pytest.raises(FileNotFoundError):
        checkpoint_layout(tmp_path / "nothing-here")
