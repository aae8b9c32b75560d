"""`flexmarl bench lora-alpha`: the alpha rules, the protocol's decision on synthetic cells, and a tiny real
run (one rank, two rules, one seed, two iterations) that writes its cells and resumes without re-running."""

import json

import pytest

from benchmarks.lora_alpha import alpha_of, run_alpha_bench, summarise
from tests.flexmarl.llm.conftest import tiny_task_models  # noqa: F401  (shared session fixture)


def test_alpha_rules():
    assert [alpha_of(rule, 16) for rule in ("rank", "2rank", "16", "c8")] == [16.0, 32.0, 16.0, 32.0]


def _cells(final: dict) -> list[dict]:
    return [{"rule": rule, "rank": rank, "seed": seed, "final_reward": value + 0.01 * seed}
            for rule, value in final.items() for rank in (2, 8, 32) for seed in (0, 1)]


@pytest.mark.parametrize("final, coefficient, default", [
    ({"rank": 0.4, "2rank": 0.45, "16": 0.42, "c2": 0.41, "c8": 0.5, "c32": 0.3}, 8.0, "auto"),
    ({"rank": 0.4, "2rank": 0.55, "16": 0.42, "c2": 0.41, "c8": 0.5, "c32": 0.3}, 8.0, "2rank"),
])
def test_the_decision_follows_the_protocol(final, coefficient, default):
    summary = summarise(_cells(final))
    assert summary["complete"] and summary["auto_coefficient"] == coefficient and summary["default_alpha"] == default
    assert summary["rules"]["c8"]["mean_final_reward"] == pytest.approx(0.505)
    assert not summarise(_cells(final)[:-1])["complete"]


def test_a_tiny_sweep_writes_each_cell_and_resumes(tiny_task_models, tmp_path):
    out, logged = tmp_path / "alpha.json", []
    kwargs = dict(out=out, iterations=2, model_dir=tiny_task_models["speaker"].parent, ranks=(2,),
                  rules=("rank", "c8"), seeds=(0,))
    run_alpha_bench(log=logged.append, **kwargs)
    result = json.loads(out.read_text())
    assert [(c["rule"], c["alpha"]) for c in result["cells"]] == [("rank", 2.0), ("c8", pytest.approx(8 * 2 ** 0.5))]
    assert all(len(c["rewards"]) == 2 and 0 <= c["final_reward"] <= 1 for c in result["cells"])
    assert result["summary"]["complete"] and len(logged) == 2
    run_alpha_bench(log=logged.append, **kwargs)  # everything done: nothing runs again
    assert len(logged) == 2
