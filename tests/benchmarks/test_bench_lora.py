"""`flexmarl bench lora` end to end, tiny: both arms for 2 agents on the tests' tiny models, real runs (one
child process per arm), one timed iteration each. No timing is asserted: sizes and keys are."""

import json

from tests.flexmarl.llm.conftest import tiny_task_models  # noqa: F401  (shared session fixture)

ARM_KEYS = ("peak_rss_gib", "step_s", "push_bytes", "push_s", "swap_s_per_agent", "tokens_per_s", "success")


def test_lora_bench_writes_every_number_for_both_arms(tiny_task_models, tmp_path):
    from benchmarks.lora import run_lora_bench

    out = tmp_path / "lora.json"
    run_lora_bench(agents=(2,), iterations=1, out=out, quick=True, model_dir=tiny_task_models["speaker"].parent,
                   log=None)
    result = json.loads(out.read_text())
    row = result["agents"]["2"]
    for key in ARM_KEYS:
        for arm in ("full", "lora"):
            assert f"{key}_{arm}" in row, f"{key}_{arm}"
    assert 0 < row["push_bytes_lora"] < row["push_bytes_full"] / 20  # rank-8 q/k/v/o adapters vs the whole model
    assert row["peak_rss_gib_full"] > 0.1 and row["peak_rss_gib_lora"] > 0.1 and row["step_s_lora"] > 0
    assert row["swaps_per_step_full"] > 0 and row["swap_s_per_agent_lora"] > 0  # one trainer slot, two agents
    assert 0 <= row["success_full"] <= 1 and 0 <= row["success_lora"] <= 1
    assert set(result["targets"]) >= {"peak_rss_lora_le_third_of_full", "push_bytes_lora_le_5pct_of_full",
                                      "step_s_lora_le_full", "success_within_0.05"}
    assert result["base"]["parameters"] > 0 and result["settings"]["quick"]


def test_teams_task_gives_every_agent_its_own_team_reward():
    import asyncio

    import numpy as np

    from benchmarks.lora import SpeakerListenerTeams
    from flexmarl.llm.tasks import Completion

    task = SpeakerListenerTeams(teams=2)
    assert task.agents == ("speaker_0", "listener_0", "speaker_1", "listener_1")
    query = task.sample_query(np.random.default_rng(0))

    async def call(agent, prompt):  # team 0 answers right, team 1 wrong
        if agent.startswith("speaker"):
            return Completion(text=" " + query["target"])
        wrong = next(letter for letter in "ABCD" if letter != query["answer"])
        return Completion(text=" " + (query["answer"] if agent.endswith("_0") else wrong))

    outcome = asyncio.run(task.run(query, call))
    assert outcome.rewards == {"speaker_0": 1.0, "listener_0": 1.0, "speaker_1": 0.0, "listener_1": 0.0}
    assert outcome.success == 0.5 and set(task.sft_examples(np.random.default_rng(0), 4)) == set(task.agents)
