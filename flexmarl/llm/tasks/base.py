"""The text-task contract: agents, queries, a workflow of agent calls, a verifiable reward.

A task knows nothing of engines or trainers: its `run` gets a `call(agent, prompt) -> Completion`
coroutine from the workflow worker, and returns an `Outcome`. Only numpy is imported here, so tasks
load anywhere (rollout workers, the CLI, tests) without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Awaitable, Callable

import numpy as np


@dataclass
class Completion:
    """What one agent call returns to the task."""

    text: str
    """The generated text (special tokens dropped)."""
    token_ids: list[int] = field(default_factory=list)
    """Generated token ids (as the engine sampled them, eos included when it stopped on eos)."""
    logprobs: list[float] = field(default_factory=list)
    """Behaviour log-prob of each generated token."""
    finish_reason: str = "stop"
    """'stop' (eos), 'length' (max_new_tokens reached), or 'refused' (nothing generated, see error)."""
    error: str | None = None
    """Why the call produced no completion (e.g. 'prompt_too_long'); tasks score it as a format error of
    that agent."""


@dataclass
class Outcome:
    """The result of one trajectory."""

    rewards: dict[str, float]
    """Reward of every agent of the task."""
    format_errors: dict[str, int]
    """Per agent: outputs that could not be parsed (each got the format penalty)."""
    success: float
    """Task success of the trajectory, 0..1 (the number to report; rewards may differ by agent)."""


Call = Callable[[str, str], Awaitable[Completion]]
"""`await call(agent, prompt_text)`: one generation by that agent's policy."""


class TextTask:
    """Base class of text tasks (workloads with LLM agents). Subclasses set `name` and `agents` and
    implement the four methods; constructor keyword arguments come from `llm.task_kwargs`."""

    name: str = ""
    """Registry name."""
    agents: tuple[str, ...] = ()
    """Agents, in the order their calls usually happen."""

    def __init__(self, format_penalty: float = -1.0):
        self.format_penalty = float(format_penalty)

    def sample_query(self, rng: np.random.Generator) -> dict:
        """One task instance, JSON-able (it travels in rollout requests and logs)."""
        raise NotImplementedError

    async def run(self, query: dict, call: Call) -> Outcome:
        """The workflow of one trajectory on `query`: plain async code awaiting agent calls (independent
        calls may run concurrently with asyncio.gather; a dependent call awaits its inputs)."""
        raise NotImplementedError

    def sft_examples(self, rng: np.random.Generator, n: int) -> dict[str, list[tuple[str, str]]]:
        """Warm-start data: per agent, n (prompt, completion) pairs of a policy that sometimes succeeds."""
        raise NotImplementedError

    def corpus(self) -> list[str]:
        """Text covering every word, letter and prompt template the task uses (tokenizer training)."""
        raise NotImplementedError

    def vocabulary_tokens(self) -> list[str]:
        """Strings the tokenizer must keep as one token each (added to the trained BPE vocabulary), e.g.
        item codes `<a3>` that the byte-level pre-tokenizer would otherwise split; none by default."""
        return []
