"""The workload seam: what a kind of agent training (MARL on envs, LLM agents on text tasks) plugs into
the orchestrator core, and the little the core hands it.

The core (orchestrator/core.py) owns what every workload shares: placement, the experience store, the
rollout workers' requests with their fault recovery, the three pipelines, weight-sync timing, common
metrics and checkpoint state. A `Workload` owns everything that differs: its groups, its actors, how its
results become rows, where trained weights go, what it can repair, and the units it counts in.

`flexmarl` sits below `orchestrator`, so a workload never imports the core: it gets the runtime (the
`Runtime` protocol below, duck-typed: orchestrator/runtime.py implements it) and the core's live list of
rollout worker handles when its actors are created.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from flexmarl.actors import ActorSpec
from flexmarl.config import Config


class WorkerDiedError(RuntimeError):
    """The process behind an actor is gone (`Runtime.get` raises it); `actor` is the plan's actor (ActorSpec)
    when known. Here, below the runtime, so that a workload can catch it for its own actors."""

    def __init__(self, message: str, actor: ActorSpec | None = None):
        super().__init__(message)
        self.actor = actor


class Runtime(Protocol):
    """What a workload may do with actors (orchestrator/runtime.py: Ray actors or one process)."""

    plan: Any
    """The placement plan: `plan.locate(actor_key) -> (pool, index, bundle)`."""

    def create(self, cls: type, *args, actor: str, concurrency: int = 1, replacement: bool = False,
               **kwargs) -> Any: ...
    def misplaced(self, handle) -> bool: ...
    def node_of(self, actor: str) -> str: ...
    def run_on_node(self, node: str, fn, *args): ...
    def wait(self, refs: list, timeout: float | None = None) -> tuple[list, list]: ...
    def call(self, handle, method: str, *args, num_returns: int = 1): ...
    def get(self, ref_or_refs): ...
    def kill(self, handle) -> None: ...
    def device_for(self, actor: str, device: str) -> str: ...


class Group(Protocol):
    """An agent group: the agents one trainer (and one table of the store) serves."""

    name: str
    agents: Sequence[str]


class RequestResult(Protocol):
    """What the core reads from the first return value of a worker's `sample_rows(request)` (the others
    are one row payload per group, in `Workload.groups` order)."""

    request_id: str
    version: int
    """Policy version the rows came from (the stale pipeline learns it only here)."""
    worker: int
    sample_s: float
    started_at: float
    finished_at: float
    counters: dict[str, float]
    """Workload counts summed over an iteration's requests into metrics of the same name."""
    agent_returns: dict[str, list[float]]
    """Per agent, its own return (reward) of each episode (trajectory) ended in the request."""


@dataclass(frozen=True)
class ProgressUnit:
    """The one counter the run loop advances: progress bar, TensorBoard step, resume and checkpoints."""

    name: str
    """Metric and checkpoint key of the running total: `env_steps`, `trajectories`."""
    short: str
    """Progress-bar unit: `step`, `traj`."""
    per_iteration: int
    """How many one iteration adds, as configured (the progress bar's scale)."""
    score: str
    """The metric that says whether the agents learn (shown beside the bar): `episode_return_mean`, ..."""


class Workload(Protocol):
    """One kind of agent training, as the orchestrator core drives it. Nothing subclasses the core: the
    core calls these, in this order: `actors`, `create_actors`, then per iteration requests to the workers,
    `row_meta` and `check_result` per result, `repair` on a failed request, `push_weights` /
    `load_worker_weights` after each update, `metrics` and `after_iteration`."""

    cfg: Config
    """The run's config; the core swaps in another one on `use_config` (pipeline and load balancing only)."""
    groups: list
    """Its groups (`Group`s, with whatever a checkpoint signature needs), in row-payload order."""
    progress: ProgressUnit
    inference_starts_synced: bool
    """True when the inference side starts holding the trainers' weights (LLM engines load the same
    checkpoint): the core skips the push before the first iteration."""
    weights_apply_between_requests: bool
    """True when a weight push may be queued behind requests in flight (a MARL worker loads it after its
    current request). False: the inference side takes weights only when idle (LLM engines), so the stale
    pipeline finishes the requests in flight before each push."""

    def actors(self) -> list[ActorSpec]:
        """Every actor to place: workers `worker/<i>`, trainers, and the workload's own (engines)."""

    def create_actors(self, runtime: Runtime, workers: list) -> dict[str, Any]:
        """Start the placed actors: append the rollout workers to `workers` (the core's list: it replaces a
        dead worker in place, and the workload may read it later) and return the trainers by group."""

    def make_worker(self, index: int) -> Any:
        """A fresh rollout worker `worker/<index>` (a replacement for a dead or hung one)."""

    def push_weights(self, weights: dict[str, Any], version: int) -> list:
        """Send the trainers' weights (by group, object references) to the workload's own inference actors;
        returns the acknowledgements the core waits for (a failed one stops the run)."""

    def load_worker_weights(self, worker, weights: dict[str, Any], version: int) -> Any | None:
        """Send the weights to one rollout worker; its acknowledgement, or None when workers hold no weights."""

    def row_meta(self, result: RequestResult, group: str) -> dict:
        """Small metadata stored by value with the group's row of this result."""

    def check_result(self, result: RequestResult) -> None:
        """Inspect a completed request before its rows are published; raises to stop the run."""

    def repair(self, exc: BaseException) -> bool:
        """A request failed with `exc` while its worker lives: repair the cause (e.g. replace a dead engine
        with one holding the current weights) and return True to send the request again; False: fatal."""

    def count(self, results: list) -> int:
        """How much of `progress.name` the results add."""

    def metrics(self, results: list) -> dict:
        """The workload's own metrics of one iteration, in its own units (counters are summed by the core)."""

    def after_iteration(self, metrics: dict, timeline: dict) -> None:
        """Between iterations (no request in flight, except under the stale pipeline): add metrics that need
        the actors, and rearrange them for the next iteration (e.g. move engines between groups)."""
