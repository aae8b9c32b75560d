"""Text tasks a user writes from docs/llm.md alone (named `tests.user_tasks:Class` in `llm.task`)."""

from __future__ import annotations

import numpy as np

from flexmarl.llm.tasks.base import Call, Outcome, TextTask

COLOURS = ("red", "blue", "green", "yellow")


class ColourRelay(TextTask):
    """The speaker names the target colour, the listener repeats what it heard; both get 1 when the
    listener's answer names the target, less 0.01 per character of the answer (so that even random
    models' trajectories differ in reward). `fail_every` > 0: on queries whose number is a multiple of it,
    `run` raises (as buggy user code does) in the trajectories whose speaker said an even number of
    tokens, i.e. in some but usually not all of the query's group; the samples are seeded, so the same
    trajectories fail on every run."""

    agents = ("speaker", "listener")

    def __init__(self, format_penalty: float = -1.0, fail_every: int = 0):
        super().__init__(format_penalty)
        self.fail_every = fail_every

    def sample_query(self, rng: np.random.Generator) -> dict:
        return {"target": str(rng.choice(COLOURS)), "number": int(rng.integers(1000))}

    async def run(self, query: dict, call: Call) -> Outcome:
        said = await call("speaker", f"speaker: target {query['target']} circle. message:")
        if self.fail_every and query["number"] % self.fail_every == 0 and len(said.token_ids) % 2 == 0:
            raise KeyError(f"no colour parsed from {said.text!r}")  # user code failing on some outputs
        heard = await call("listener", f"listener: A {query['target']} circle. message: {said.text}")
        success = float(query["target"] in heard.text)
        reward = success - 0.01 * len(heard.text)
        return Outcome(rewards={"speaker": reward, "listener": reward}, format_errors={"speaker": 0, "listener": 0},
                       success=success)

    def sft_examples(self, rng: np.random.Generator, n: int) -> dict[str, list[tuple[str, str]]]:
        targets = [str(c) for c in rng.choice(COLOURS, size=n)]
        return {"speaker": [(f"speaker: target {c} circle. message:", f" {c}") for c in targets],
                "listener": [(f"listener: A {c} circle. message: {c}", f" {c}") for c in targets]}

    def corpus(self) -> list[str]:
        return [f"speaker: target {c} circle. message: listener: A {c} circle. message: {c}" for c in COLOURS] * 8
