"""Workload 2: scenario agents decoding semantic IDs in simulated sessions (task `recsys_sessions`):
prompts, parsing, rewards (the simulator's mapped rewards, the format penalty), session length, the
request stream (same run.seed, same queries, whatever the loss), both model groupings through the
orchestrator (HF engines, serial), and the suite's scoring adapter."""

import asyncio

import numpy as np
import pytest
import torch

from flexmarl.config import config_from_dict
from flexmarl.llm.tasks import Completion, make_task
from flexmarl.llm.tasks.recsys import RecsysSessions, code_text, nearest_slot, parse_code
from orchestrator.dispatch import request_seed

SESSION_STEPS = 3
SERVED_QUERIES: list[dict] = []
"""Queries the recording task below was asked to run, in order (serial runtime: same process)."""


class RecordingRecsysSessions(RecsysSessions):
    """recsys_sessions that records the queries it serves (passed to the orchestrator as 'module:Class')."""

    async def run(self, query, call):
        SERVED_QUERIES.append(query)
        return await super().run(query, call)


@pytest.fixture(scope="module")
def task() -> RecsysSessions:
    return make_task("recsys_sessions", format_penalty=-2.0, session_steps=SESSION_STEPS)


TINY_RECSYS_BUILD = dict(warm_start_steps=30, task_kwargs={"session_steps": SESSION_STEPS}, sft_examples=256,
                         eval_queries=2, hidden=32, layers=1, heads=1, head_dim=32, max_positions=128)
"""One tiny model per scenario, a few warm-start steps: it knows the format, not much more."""


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict:
    """{scenario: checkpoint dir}, built once and kept beside pytest's temp folders keyed by the build's
    sources (conftest's tiny_task_models convention), under a file lock shared by concurrent sessions."""
    import fcntl
    import hashlib
    from pathlib import Path

    import flexmarl.llm.build
    import flexmarl.llm.models
    import flexmarl.llm.tasks.recsys
    import flexmarl.llm.warm_start
    import flexmarl.semantic_ids

    digest = hashlib.sha256(repr(sorted(TINY_RECSYS_BUILD.items())).encode())
    for module in (flexmarl.llm.build, flexmarl.llm.models, flexmarl.llm.warm_start, flexmarl.llm.tasks.recsys,
                   flexmarl.semantic_ids):
        digest.update(Path(module.__file__).read_bytes())
    root = tmp_path_factory.getbasetemp().parent / f"flexmarl-tiny-recsys-{digest.hexdigest()[:12]}"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return flexmarl.llm.build.build_task_models("recsys_sessions", root / "models", seed=0, **TINY_RECSYS_BUILD)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def fixed_item_call(task, item: int | None, calls: list):
    """Agent calls answered by a fixed policy: always the code of `item` (None: unparsable text)."""
    async def call(agent, prompt):
        calls.append((agent, prompt))
        return Completion(text="no idea" if item is None else code_text(task.world.ids.codes[item]))

    return call


def replayed_return(task, query: dict, item: int) -> dict:
    """Per scenario, the return of showing the candidate nearest to `item`'s code at every step, replayed
    directly on the simulator with the query's session seed."""
    codes = task.world.ids.codes
    env = task.new_env()
    env.reset(query["session_seed"], users=[query["user"]], scenarios=[task.agents.index(query["scenario"])])
    returns = {agent: 0.0 for agent in task.agents}
    for _ in range(SESSION_STEPS):
        s = int(env.scenario[0])
        actions = np.zeros((1, env.S), int)
        actions[0, s] = nearest_slot(codes[item], codes[env.candidates[0, : env.scenarios[s].num_candidates]])
        step = env.step(actions)
        returns[task.agents[s]] += float(step.rewards[0, s])
        if step.done[0]:
            break
    return returns


def test_prompts_carry_the_scenario_and_the_users_likes_as_codes(task):
    assert task.agents == ("home_feed", "genre_comedy", "more_like_this")
    history = task.user_history(7)
    assert 0 < len(history) <= 4 and np.array_equal(history, task.world.liked[7][-len(history):])
    prompts = {agent: task.prompt(agent, history) for agent in task.agents}
    assert len(set(prompts.values())) == len(task.agents)  # a shared model tells the scenarios apart
    for agent, prompt in prompts.items():
        assert prompt.startswith(agent) and code_text(task.world.ids.codes[history[-1]]) in prompt
    tokens = set(task.vocabulary_tokens())
    assert all(f"<{letter}{v}>" in tokens for code in task.world.ids.codes for letter, v in zip("abcd", code))
    corpus = " ".join(task.corpus())
    assert all(agent in corpus for agent in task.agents)


def test_codes_parse_strictly_at_the_start_of_the_completion():
    assert parse_code("<a3><b5><c1><d17>", 4) == (3, 5, 1, 17)
    assert parse_code("  <a3><b5><c1><d17> extra", 4) == (3, 5, 1, 17)  # text after the code is ignored
    for bad in ("", "hello", "<a3><b5><c1>", "<b3><a5><c1><d17>", "x<a3><b5><c1><d17>", "<a03><b5><c1><d1>"):
        assert parse_code(bad, 4) is None, bad
    codes = np.array([[1, 2, 3, 0], [3, 5, 0, 0], [3, 5, 1, 2]])
    assert nearest_slot((3, 5, 1, 17), codes) == 2 and nearest_slot((7, 0, 0, 0), codes) == 0


def test_a_session_earns_the_simulators_mapped_rewards(task):
    query = task.sample_query(np.random.default_rng(3))
    item = int(task.world.liked[query["user"]][-1])
    calls: list = []
    outcome = asyncio.run(task.run(query, fixed_item_call(task, item, calls)))
    assert 1 <= len(calls) <= SESSION_STEPS and calls[0][0] == query["scenario"]
    assert outcome.rewards == pytest.approx(replayed_return(task, query, item))
    assert outcome.format_errors == {agent: 0 for agent in task.agents}
    assert 0.0 <= outcome.success <= 1.0
    visited = {agent for agent, _ in calls}
    assert all(outcome.rewards[a] == 0.0 for a in task.agents if a not in visited)


def test_unparsable_codes_get_the_format_penalty_and_are_counted(task):
    query = task.sample_query(np.random.default_rng(4))
    calls: list = []
    outcome = asyncio.run(task.run(query, fixed_item_call(task, None, calls)))
    for agent in task.agents:
        made = sum(a == agent for a, _ in calls)
        assert outcome.format_errors[agent] == made and outcome.rewards[agent] == pytest.approx(-2.0 * made)
    invalid = "<a0><b0><c0><d999>"  # well-formed, but names no item

    async def call(agent, prompt):
        return Completion(text=invalid)

    assert sum(asyncio.run(task.run(query, call)).format_errors.values()) == len(calls)


def test_queries_are_seeded(task):
    draw = lambda seed: [task.sample_query(np.random.default_rng(seed)) for _ in range(3)]  # noqa: E731
    assert draw(5) == draw(5) and draw(5) != draw(6)
    query = draw(5)[0]
    assert set(query) == {"user", "scenario", "session_seed"} and query["scenario"] in task.agents


def recsys_config(models: dict, groups: str, loss: str, seed: int = 0):
    names = {"independent": models, "shared": {"shared": models["home_feed"]}}[groups]
    return config_from_dict({
        "run": {"name": "test-recsys-llm", "workload": "llm", "mode": "serial", "seed": seed, "iterations": 1,
                "progress": False},
        "llm": {"task": f"{__name__}:RecordingRecsysSessions", "task_kwargs": {"session_steps": SESSION_STEPS},
                "models": {k: str(v) for k, v in names.items()}, "groups": groups, "backend": "hf",
                "group_size": 2, "queries_per_request": 1, "queries_per_iteration": 2, "max_new_tokens": 5,
                "max_prompt_tokens": 64,
                "loss": loss, "lr": 1e-3, "concurrent_requests": 1},
        "pipeline": {"mode": "microbatch"},
    })


def iteration_queries(cfg, iteration: int) -> list[dict]:
    """The queries of one iteration's requests, drawn as the workflow worker draws them from each
    request's seed: a function of (run.seed, iteration) only, whatever the loss."""
    task = make_task(cfg.llm.task, format_penalty=cfg.llm.format_penalty, **cfg.llm.task_kwargs)
    queries = []
    for r in range(cfg.requests_per_iteration):
        rng = np.random.default_rng(request_seed(cfg.run.seed, iteration, r))
        queries += [task.sample_query(rng) for _ in range(cfg.llm.queries_per_request)]
    return queries


def test_same_run_seed_same_request_stream_whatever_the_loss(tiny_models):
    streams = {loss: [iteration_queries(recsys_config(tiny_models, "independent", loss), i) for i in range(3)]
               for loss in ("grpo", "sa_gcpo", "gbpo")}
    assert streams["grpo"] == streams["sa_gcpo"] == streams["gbpo"]
    other_seed = [iteration_queries(recsys_config(tiny_models, "independent", "grpo", seed=1), i) for i in range(3)]
    assert other_seed != streams["grpo"]


@pytest.mark.parametrize("groups", ["independent", "shared"])
def test_each_loss_trains_through_the_orchestrator_on_the_same_requests(tiny_models, groups):
    from orchestrator.core import make_orchestrator
    from orchestrator.runtime import SerialRuntime

    first_rollouts = {}
    for loss in ("grpo", "sa_gcpo", "gbpo"):
        cfg = recsys_config(tiny_models, groups, loss)
        SERVED_QUERIES.clear()
        orch = make_orchestrator(cfg, SerialRuntime())
        assert [g.name for g in orch.groups] == (list(orch.workload.task.agents) if groups == "independent" else ["shared"])
        metrics = [orch.step() for _ in range(2)]
        orch.shutdown()
        served = sorted(SERVED_QUERIES, key=lambda q: q["session_seed"])
        expected = sorted([q for i in range(2) for q in iteration_queries(cfg, i)] * cfg.llm.group_size,
                          key=lambda q: q["session_seed"])
        assert served == expected  # G sessions per query, the queries of the request stream
        calls = sum(v for k, v in metrics[0].items() if k.startswith("llm/calls/"))
        assert 2 * 2 <= calls <= 2 * 2 * SESSION_STEPS  # a few steps per session
        first_rollouts[loss] = (metrics[0]["charts/reward_mean"], calls)
    # Before any update every loss samples the same sessions: same queries, same call seeds, same weights.
    assert first_rollouts["grpo"] == first_rollouts["sa_gcpo"] == first_rollouts["gbpo"]


def test_candidate_scores_are_code_log_likelihoods(task, tiny_models):
    from flexmarl.llm.models import load_causal_lm, load_tokenizer
    from flexmarl.llm.recsys_scores import llm_scores

    tokenizer = load_tokenizer(tiny_models["home_feed"])
    models = {agent: load_causal_lm(path) for agent, path in tiny_models.items()}
    assert len(tokenizer.encode(code_text(task.world.ids.codes[0]))) == task.world.ids.length  # one token each
    scores = llm_scores(task, models, tokenizer)
    users, candidates = np.array([3, 10, 11]), np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])
    value = scores(None, 1, users, candidates)
    model = models["genre_comedy"]
    for row, user in enumerate(users):
        prompt = tokenizer.encode(task.prompt("genre_comedy", task.user_history(int(user))))
        for k, item in enumerate(candidates[row]):
            code = tokenizer.encode(code_text(task.world.ids.codes[item]))
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + code])).logits[0], -1)
            expected = sum(float(logp[len(prompt) - 1 + t, token]) for t, token in enumerate(code))
            assert value[row, k] == pytest.approx(expected, abs=1e-4)
