"""Inter-agent load balancing on real (HF) engines and agent-centric training on shared trainer slots:
a skewed workload moves an engine to the busy agent with that agent's current weights and version;
training with swaps ends with exactly the parameters of dedicated trainers; a lost swapped-out state
fails clearly and the checkpoint brings it back."""

import pytest
import torch

from flexmarl.llm.fleet import same_checkpoint_layout
from flexmarl.llm.slots import TrainerSlot, TrainingStateLost
from flexmarl.llm.tasks import make_task
from orchestrator.core import make_orchestrator
from orchestrator.runtime import SerialRuntime
from tests.flexmarl.llm.conftest import tiny_task_models  # noqa: F401  (the shared session fixture)
from tests.orchestrator.test_llm import llm_config, trainer_weights


def skewed_config(models, **llm):
    return llm_config(models, llm={"task": "speaker_listener_skewed", "task_kwargs": {"listener_calls": 8},
                                   "engines_per_agent": 2, **llm})


def test_the_skewed_task_asks_the_listener_k_times():
    import asyncio

    from flexmarl.llm.tasks.base import Completion

    task = make_task("speaker_listener_skewed", listener_calls=3)
    calls = []

    async def call(agent, prompt):
        calls.append(agent)
        return Completion(text=" A" if agent == "listener" else " red")

    query = {"target": "red circle", "distractors": ["blue star"], "candidates": ["red circle", "blue star"],
             "answer": "A"}
    outcome = asyncio.run(task.run(query, call))
    assert calls == ["speaker", "listener", "listener", "listener"]
    assert outcome.success == 1.0 and outcome.rewards == {"speaker": 1.0, "listener": 1.0}


def test_a_skewed_load_moves_an_engine_to_the_busy_agent_with_its_current_weights(tiny_task_models):
    assert same_checkpoint_layout(list(map(str, tiny_task_models.values())))  # moves reload in place
    orch = make_orchestrator(skewed_config(tiny_task_models), SerialRuntime())
    first = orch.step()
    assert first["llm/load/listener"] == 8 * first["llm/load/speaker"] > 0
    assert first["llm/engines/speaker"] == first["llm/engines/listener"] == 2
    assert first["llm/engine_moves"] == 1  # per-instance calls 8 : 1, above the threshold 5
    assert {g: len(e) for g, e in orch.workload.engines.items()} == {"speaker": 1, "listener": 3}
    moved = orch.workload.engines["listener"][2]
    assert moved.version() == 1
    # the moved instance serves the listener's version-1 weights: same samples as a listener engine
    prompt = [5, 6, 7, 8]
    outs = [e.generate(prompt, 4, 1.0, 123, 1) for e in orch.workload.engines["listener"]]
    assert outs[2].token_ids == outs[0].token_ids and outs[2].logprobs == pytest.approx(outs[0].logprobs, abs=1e-5)
    second = orch.step()
    assert second["perf/policy_lag_max"] == 0 and second["llm/engines/listener"] == 3
    calls = orch.workload.engine_calls()
    assert len(calls["listener"]) == 3 and all(c > 0 for c in calls["listener"])  # routers use the new instance


def test_balancing_off_keeps_the_allocation(tiny_task_models):
    orch = make_orchestrator(skewed_config(tiny_task_models, load_balancing=False), SerialRuntime())
    metrics = orch.step()
    assert metrics["llm/engine_moves"] == 0 and {g: len(e) for g, e in orch.workload.engines.items()} == {"speaker": 2, "listener": 2}


def test_training_on_one_shared_slot_equals_dedicated_trainers(tiny_task_models):
    final = {}
    for slots in (0, 1):
        cfg = llm_config(tiny_task_models, resources={"trainer_slots": slots}, trainer={"num_minibatches": 2})
        orch = make_orchestrator(cfg, SerialRuntime())
        metrics = [orch.step() for _ in range(2)]
        final[slots] = trainer_weights(orch)
        if slots:
            assert metrics[-1]["perf/trainer_swaps"] > 0 and 0 <= metrics[-1]["perf/swap_hidden_share"] <= 1
            slot = next(iter(orch.trainers.values())).slot
            assert slot.swaps > 8  # groups took turns on the slot every micro-batch
    assert all(torch.equal(final[0][g][k], final[1][g][k]) for g in final[0] for k in final[0][g])


def test_a_lost_swapped_out_state_fails_clearly_and_the_checkpoint_restores_it(tiny_task_models, ray_cluster):
    import ray

    from tests.flexmarl.test_state_swap import wait_until_lost

    @ray.remote(num_cpus=0)
    class Holder:
        """A process owning an object-store copy (as a slot on another node would), then killed."""

        def hold(self, value):
            return [ray.put(value)]  # nested: the object stays owned by this actor

    cfg = llm_config(tiny_task_models)
    slot = TrainerSlot(cfg, [(g, str(d), i) for i, (g, d) in enumerate(tiny_task_models.items())], where="remote")
    checkpoint = slot.call("speaker", "get_state")
    slot.call("listener", "get_weights")  # binds the listener: the speaker's state goes to the object store
    state, _ = slot.swapped["speaker"]
    assert state.location == "remote"
    holder = Holder.remote()
    [state.remote_ref] = ray.get(holder.hold.remote(ray.get(state.remote_ref)))
    ray.kill(holder)  # the swap target dies with the only copy
    wait_until_lost(state.remote_ref)
    for _ in range(2):  # the group refuses work until a checkpoint is loaded
        with pytest.raises(TrainingStateLost, match="'speaker'.*lost.*--resume"):
            slot.call("speaker", "get_weights")
    assert torch.equal(slot.call("listener", "get_state")["model"]["lm_head.weight"],
                       slot.call("listener", "get_state")["model"]["lm_head.weight"])  # the other group is fine
    slot.call("speaker", "set_state", checkpoint)
    restored = slot.call("speaker", "get_state")
    assert all(torch.equal(checkpoint["model"][k], restored["model"][k]) for k in checkpoint["model"])
    assert restored["version"] == checkpoint["version"]
