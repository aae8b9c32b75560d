"""Workflow worker: the LLM rollout worker. It runs a text task's workflow (agents calling each other) on
the agents' inference engines and returns one micro-batch per model group, like `RolloutWorker`.

One rollout request = `llm.queries_per_request` queries x G trajectories (a GRPO group per query). Every
trajectory is the task's own async code; independent calls run concurrently (intra-query parallelism,
at most `llm.max_concurrent_calls` of one request in flight), a dependent call awaits its inputs, and
many requests run at once on one worker (inter-query parallelism: the worker actor's concurrency is
`llm.concurrent_requests`). A request is complete only when every trajectory of every query is, so
group statistics (advantages) are final when its micro-batches are released.

Task code that fails (its `run` raises, or returns no usable Outcome) fails only its trajectory: the
query's whole GRPO group is dropped for every agent (a group's advantages need all its members), the
failures are counted (`llm/task_errors/<task>`, `llm/dropped_groups`) and described in the result's
`errors`; the LLM workload stops the run past `llm.max_task_errors`. Each agent's mean reward goes out
as `agent_returns` (`charts/return/<agent>` in metrics.csv).

Determinism: every call is sampled with a seed derived from (request seed, query, trajectory, agent,
k-th call of that agent in the trajectory), and on the weights of the request's policy version, so a
request lost with a dead engine is regenerated with the same samples.
"""

from __future__ import annotations

import asyncio
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from flexmarl.algorithms import ADVANTAGE_ESTIMATORS
from flexmarl.config import Config
from flexmarl.errors import first_line
from flexmarl.llm.balance import pick_instance
from flexmarl.llm.groups import LLMGroup
from flexmarl.llm.tasks import make_task
from flexmarl.llm.tasks.base import Completion, Outcome
from flexmarl.rollout.request import RolloutRequest


class TaskFailure(RuntimeError):
    """The task's own code failed in more trajectories than `llm.max_task_errors` allows (the workload
    counts the failures the workflow reports; the run stops with this)."""


class EngineDiedError(RuntimeError):
    """An inference engine died while serving a request; the request must be sent again."""

    def __init__(self, group: str, index: int, incarnation: int, cause: str = ""):
        super().__init__(f"inference engine {index} of model group {group!r} (incarnation {incarnation}) died: {cause}")
        self.group, self.index, self.incarnation, self.cause = group, index, incarnation, cause

    def __reduce__(self):  # picklable with its fields (it crosses Ray)
        return (EngineDiedError, (self.group, self.index, self.incarnation, self.cause))


def run_coroutine(coroutine):
    """Run a coroutine to completion from synchronous code, also from a thread that already runs an
    event loop (Ray's threaded actors do): then in a fresh thread with its own loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def describe_task_error(exc: BaseException) -> str:
    """`Type: message (file:line in function)` of an exception that task code raised, at its innermost frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def outcome_problem(outcome, agents: tuple[str, ...]) -> str | None:
    """What is wrong with what a task's `run` returned (None: a usable Outcome with a number per agent)."""
    if not isinstance(outcome, Outcome):
        return f"the task's run returned {type(outcome).__name__}, not an Outcome"
    for agent in agents:
        try:
            if not np.isfinite(float(outcome.rewards[agent])):
                return f"the task's run returned reward {outcome.rewards[agent]!r} for {agent!r}, not a finite number"
        except KeyError:
            return f"the task's run returned no reward for agent {agent!r} (Outcome.rewards: {outcome.rewards!r})"
        except (TypeError, ValueError):
            return f"the task's run returned reward {outcome.rewards[agent]!r} for {agent!r}, not a number"
    return None


def call_seed(request_seed: int, query: int, trajectory: int, agent: int, k: int) -> int:
    return int(np.random.SeedSequence([request_seed, query, trajectory, agent, k]).generate_state(1)[0] >> 1)


@dataclass
class WorkflowResult:
    """What one request did, in the LLM workload's own units; its rows travel as the other return values
    of `sample_rows` (one per model group)."""

    request_id: str
    version: int
    """Policy version of the engines that served it (the oldest, when no version was asked for)."""
    worker: int
    team_rewards: list[float] = field(default_factory=list)
    """Per kept trajectory (its GRPO group was complete), the mean of the agents' rewards."""
    successes: list[float] = field(default_factory=list)
    """Per kept trajectory, the task's success flag (1.0 or 0.0)."""
    agent_returns: dict[str, list[float]] = field(default_factory=dict)
    """Per agent, its reward in each kept trajectory (`charts/return/<agent>`)."""
    num_active: dict[str, int] = field(default_factory=dict)
    """Per model group, the samples (agent calls) in its row."""
    counters: dict[str, float] = field(default_factory=dict)
    """Calls per agent, generated tokens, refused prompts, format and task errors, dropped groups."""
    errors: list[str] = field(default_factory=list)
    """One description per query whose group was dropped because the task's own code failed."""
    sample_s: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0


@dataclass
class CallRecord:
    """One agent call as the trainer sees it (a sample)."""

    agent: str
    turn: int
    """Position of the call in its trajectory (0 = the first call made)."""
    prompt_ids: list[int]
    completion_ids: list[int]
    logp: list[float]
    version: int


@dataclass
class _Trajectory:
    calls: list[CallRecord] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    """Calls issued per agent so far (the k of the call seed)."""
    turns: int = 0
    """Calls issued in the trajectory so far."""
    engine_error: BaseException | None = None
    """What a call of this trajectory raised (the engine's fault, not the task's)."""


class EngineRouter:
    """Sends an agent's calls to the least-loaded engine of its model group's engine pool (intra-agent
    balancing; the adapter groups' shared pool balances all their agents' calls together).

    Engines are Ray actor handles or in-process objects with the same `generate_many`; loads are the
    calls this router has in flight on each engine. Calls that become ready in the same event-loop tick
    for the same engine travel together in one `generate_many` round trip (one actor call instead of
    one per call: on small models the per-call overhead, not the engine, bounds rollout).
    """

    def __init__(self, engines: dict[str, list], incarnations: dict[str, list[int]] | None = None):
        self.engines = {g: list(e) for g, e in engines.items()}
        # copies: in-process (serial runtime) the orchestrator's own tables must not change with ours
        self.incarnations = {g: list(i) for g, i in (incarnations or {g: [0] * len(e) for g, e in engines.items()}).items()}
        self.in_flight = {g: [0] * len(e) for g, e in engines.items()}
        self.calls = {g: [0] * len(e) for g, e in engines.items()}
        self._batches: dict[tuple, list] = {}
        """(event loop, group, instance) -> calls waiting for this tick's round trip."""
        self._lock = threading.Lock()  # requests run in several threads (one event loop each)

    def replace(self, group: str, index: int, engine, incarnation: int) -> None:
        with self._lock:
            while index >= len(self.engines[group]):  # an instance added by rebalancing
                for table, empty in ((self.engines, None), (self.incarnations, 0), (self.in_flight, 0), (self.calls, 0)):
                    table[group].append(empty)
            self.engines[group][index], self.incarnations[group][index] = engine, incarnation

    def remove(self, group: str, index: int) -> None:
        with self._lock:
            for table in (self.engines, self.incarnations, self.in_flight, self.calls):
                del table[group][index]

    async def generate(self, group: str, prompt_ids: list[int], **kwargs):
        loop = asyncio.get_running_loop()
        with self._lock:
            index = pick_instance(self.in_flight[group])
            self.in_flight[group][index] += 1
            self.calls[group][index] += 1
            key = (loop, group, index)
            batch = self._batches.get(key)
            if batch is None:
                batch = self._batches[key] = []
                loop.call_soon(lambda: asyncio.ensure_future(self._send(key)))
            future = loop.create_future()
            batch.append(({"prompt_ids": prompt_ids, **kwargs}, future))
        try:
            return await future
        finally:
            with self._lock:
                if index < len(self.in_flight[group]):
                    self.in_flight[group][index] -= 1

    async def _send(self, key: tuple) -> None:
        _, group, index = key
        with self._lock:
            batch = self._batches.pop(key)
            engine, incarnation = self.engines[group][index], self.incarnations[group][index]
        calls = [call for call, _ in batch]
        try:
            if hasattr(engine.generate_many, "remote"):  # a Ray actor
                import ray

                try:
                    outs = await engine.generate_many.remote(calls)
                except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                    raise EngineDiedError(group, index, incarnation, first_line(exc)) from None
            else:
                outs = await asyncio.to_thread(engine.generate_many, calls)
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), out in zip(batch, outs):
            if not future.done():
                future.set_result(out)


class WorkflowWorker:
    """Contract as RolloutWorker's: `sample_rows(request)`, `evaluate`, `health`, `metrics`."""

    def __init__(self, cfg: Config, worker_index: int, groups: list[LLMGroup], engines: dict[str, list],
                 incarnations: dict[str, list[int]] | None = None):
        from flexmarl.llm.models import load_tokenizer

        torch.set_num_threads(1)
        self.cfg, self.worker_index, self.llm = cfg, worker_index, cfg.llm
        self.task = make_task(cfg.llm.task, format_penalty=cfg.llm.format_penalty, **cfg.llm.task_kwargs)
        self.groups = groups
        self.group_of = {agent: g.name for g in groups for agent in g.agents}
        # engines are per pool: adapter groups share one, each call naming its adapter
        self.call_target = {g.name: (g.pool, {"adapter": g.name} if g.adapter is not None else {}) for g in groups}
        self.tokenizers = {g.name: load_tokenizer(g.model_dir) for g in groups}
        self.router = EngineRouter(engines, incarnations)
        self.requests_served = 0

    # -- engines (the orchestrator replaces dead ones and moves instances between agents) ---------
    def set_engine(self, group: str, index: int, engine, incarnation: int) -> None:
        self.router.replace(group, index, engine, incarnation)

    def remove_engine(self, group: str, index: int) -> None:
        self.router.remove(group, index)

    def engine_calls(self) -> dict[str, list[int]]:
        """Calls sent to each engine instance since the worker started."""
        return {g: list(c) for g, c in self.router.calls.items()}

    # -- one agent call ---------------------------------------------------------------------------
    async def _call(self, trajectory: _Trajectory, counters: dict, seeds: tuple, version, agent: str, prompt: str,
                    greedy: bool, limit: asyncio.Semaphore) -> Completion:
        group = self.group_of[agent]
        k = trajectory.counts.get(agent, 0)
        trajectory.counts[agent] = k + 1
        turn, trajectory.turns = trajectory.turns, trajectory.turns + 1
        from flexmarl.llm.models import prompt_token_ids  # transformers: imported where a tokenizer is needed

        prompt_ids = prompt_token_ids(self.tokenizers[group], prompt)
        counters[f"llm/calls/{agent}"] = counters.get(f"llm/calls/{agent}", 0) + 1
        if len(prompt_ids) > self.llm.max_prompt_tokens:
            counters["llm/prompt_too_long"] = counters.get("llm/prompt_too_long", 0) + 1
            return Completion(text="", finish_reason="refused", error="prompt_too_long")
        seed = call_seed(*seeds, self.task.agents.index(agent), k)
        pool, adapter = self.call_target[group]
        async with limit:
            out = await self.router.generate(pool, prompt_ids, max_tokens=self.llm.max_new_tokens,
                                             temperature=0.0 if greedy else self.llm.temperature, seed=seed,
                                             version=version, **adapter)
        counters["llm/generated_tokens"] = counters.get("llm/generated_tokens", 0) + len(out.token_ids)
        if out.token_ids:
            trajectory.calls.append(CallRecord(agent, turn, prompt_ids, list(out.token_ids), list(out.logprobs),
                                               out.version))
        text = self.tokenizers[group].decode(out.token_ids, skip_special_tokens=True)
        return Completion(text=text, token_ids=list(out.token_ids), logprobs=list(out.logprobs),
                          finish_reason=out.finish_reason)

    async def _trajectory(self, query: dict, seeds: tuple, version, greedy: bool, counters: dict,
                          limit: asyncio.Semaphore) -> tuple[_Trajectory, Outcome | None, str | None]:
        """(calls, outcome, None), or (calls, None, what went wrong) when the task's own code failed. A
        failed engine call is not the task's fault: it is raised, and the request is sent again."""
        trajectory = _Trajectory()

        async def call(agent: str, prompt: str) -> Completion:
            if agent not in self.group_of:
                raise ValueError(f"task {self.llm.task!r} called unknown agent {agent!r}; agents: {self.task.agents}")
            try:
                return await self._call(trajectory, counters, seeds, version, agent, prompt, greedy, limit)
            except BaseException as exc:
                trajectory.engine_error = exc
                raise

        try:
            outcome = await self.task.run(query, call)
            problem = outcome_problem(outcome, self.task.agents)
        except Exception as exc:  # noqa: BLE001 - user code: counted, its group dropped (sample_rows)
            outcome, problem = None, describe_task_error(exc)
        if trajectory.engine_error is not None:  # also when the task caught it: a call is missing
            raise trajectory.engine_error
        return trajectory, (None if problem else outcome), problem

    async def _run_queries(self, queries: list[dict], seed: int, version, greedy: bool, group_size: int):
        counters: dict = {}
        limit = asyncio.Semaphore(self.llm.max_concurrent_calls)
        jobs = [asyncio.ensure_future(self._trajectory(q, (seed, qi, j), version, greedy, counters, limit))
                for qi, q in enumerate(queries) for j in range(group_size)]
        try:
            done = await asyncio.gather(*jobs)
        except BaseException:
            for job in jobs:  # a failed call fails the request: stop its other trajectories too
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)
            raise
        return [done[i * group_size:(i + 1) * group_size] for i in range(len(queries))], counters

    # -- rollout request -> one micro-batch per model group ----------------------------------------
    def sample_rows(self, request: RolloutRequest) -> tuple:
        start = time.time()
        rng = np.random.default_rng(request.seed)
        queries = [self.task.sample_query(rng) for _ in range(self.llm.queries_per_request)]
        G = self.llm.group_size
        per_query, counters = run_coroutine(self._run_queries(queries, request.seed, request.version, False, G))
        rows = {g.name: {"sample_ids": [], "prompt_ids": [], "completion_ids": [], "logp": [], "advantages": [],
                         "versions": []} for g in self.groups}
        team_rewards, successes, errors = [], [], []
        agent_rewards: dict[str, list[float]] = {agent: [] for agent in self.task.agents}
        for q, trajectories in enumerate(per_query):
            failed = [problem for _, _, problem in trajectories if problem is not None]
            if failed:  # advantages need the whole group: the query's group goes, for every agent
                label = f"llm/task_errors/{self.task.name or type(self.task).__name__}"
                counters[label] = counters.get(label, 0) + len(failed)
                counters["llm/dropped_groups"] = counters.get("llm/dropped_groups", 0) + 1
                errors.append(f"{failed[0]} (request {request.request_id}, query {q}; "
                              f"{len(failed)} of its {G} trajectories failed)")
                continue
            outcomes = [o for _, o, _ in trajectories]
            for agent in self.task.agents:  # group-normalised advantage of each agent's reward
                advantages = ADVANTAGE_ESTIMATORS["group_norm"](torch.tensor([o.rewards[agent] for o in outcomes], dtype=torch.float64))
                for j, ((trajectory, _, _), adv) in enumerate(zip(trajectories, advantages.tolist())):
                    for record in trajectory.calls:
                        if record.agent == agent:
                            row = rows[self.group_of[agent]]
                            # {input}_{turn}_{trajectory}, as the FlexMARL paper names a sample
                            row["sample_ids"].append(f"{request.request_id}-q{q}_t{record.turn}_j{j}")
                            row["prompt_ids"].append(record.prompt_ids)
                            row["completion_ids"].append(record.completion_ids)
                            row["logp"].append(record.logp)
                            row["advantages"].append(adv)
                            row["versions"].append(record.version)
            for o in outcomes:
                team_rewards.append(float(np.mean(list(o.rewards.values()))))
                successes.append(float(o.success))
                for agent in self.task.agents:
                    agent_rewards[agent].append(float(o.rewards[agent]))
                for agent, n in o.format_errors.items():
                    counters[f"llm/format_errors/{agent}"] = counters.get(f"llm/format_errors/{agent}", 0) + n
        end = time.time()
        self.requests_served += 1
        versions = {v for row in rows.values() for v in row["versions"]}
        version = request.version if request.version is not None else (min(versions) if versions else -1)
        result = WorkflowResult(
            request_id=request.request_id, version=version, worker=self.worker_index, team_rewards=team_rewards,
            successes=successes, agent_returns=agent_rewards,
            num_active={name: len(row["advantages"]) for name, row in rows.items()}, counters=counters,
            errors=errors, sample_s=end - start, started_at=start, finished_at=end,
        )
        return (result, *[rows[g.name] for g in self.groups])

    def evaluate(self, episodes: int, seed: int) -> dict:
        """Greedy (temperature 0) success and team reward on `episodes` fresh queries."""
        rng = np.random.default_rng(seed)
        queries = [self.task.sample_query(rng) for _ in range(episodes)]
        per_query, _ = run_coroutine(self._run_queries(queries, seed, None, True, 1))
        outcomes = [o for trajectories in per_query for _, o, _ in trajectories if o is not None]
        return {"eval/return_mean": float(np.mean([np.mean(list(o.rewards.values())) for o in outcomes])),
                "eval/win_rate": float(np.mean([o.success for o in outcomes]))}

    def health(self) -> dict:
        import os

        return {"worker": self.worker_index, "pid": os.getpid()}

    def metrics(self) -> dict:
        return {"requests_served": self.requests_served}
