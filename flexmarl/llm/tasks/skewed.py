"""A skewed speaker-listener: the listener is asked `listener_calls` times per trajectory, the speaker
once, so one agent receives most of the calls (the skewed workload of FlexMARL's load-balancing
ablation, arXiv:2602.09578 Table 3). Same agents, prompts, warm-start data and models as
`speaker_listener`; only the workflow differs.

The listener's answers are independent samples (one call each, concurrent: each has its own call seed)
on the same message and candidates: a self-consistency ensemble. Each answer scores like the plain
task's (1 for the target, 0 for another candidate, the format penalty when unparsable); the listener's
reward is their mean, the speaker's the mean success (how often its message was understood), and the
trajectory's success is that same mean.
"""

from __future__ import annotations

import asyncio

from flexmarl.llm.tasks.base import Call, Outcome
from flexmarl.llm.tasks.speaker_listener import SpeakerListener, clean_message, listener_prompt, parse_letter, speaker_prompt


class SkewedSpeakerListener(SpeakerListener):
    name = "speaker_listener_skewed"

    def __init__(self, format_penalty: float = -1.0, listener_calls: int = 8, **kwargs):
        """listener_calls: listener answers per trajectory (the speaker speaks once); other keyword
        arguments as `speaker_listener`."""
        super().__init__(format_penalty, **kwargs)
        if listener_calls < 1:
            raise ValueError(f"listener_calls must be >= 1, got {listener_calls}")
        self.listener_calls = int(listener_calls)

    async def run(self, query: dict, call: Call) -> Outcome:
        said = await call("speaker", speaker_prompt(query["target"], query["distractors"]))
        prompt = listener_prompt(clean_message(said.text), query["candidates"])
        answers = await asyncio.gather(*[call("listener", prompt) for _ in range(self.listener_calls)])
        scores, hits, unparsable = [], [], 0
        for answered in answers:
            picked = None if answered.error is not None else parse_letter(answered.text, len(query["candidates"]))
            if picked is None:
                unparsable += 1
                scores.append(self.format_penalty)
                hits.append(0.0)
            else:
                hit = float(query["candidates"][picked] == query["target"])
                scores.append(hit)
                hits.append(hit)
        success = sum(hits) / len(hits)
        speaker_error = int(said.error is not None)
        rewards = {"speaker": self.format_penalty if speaker_error else success,
                   "listener": sum(scores) / len(scores)}
        return Outcome(rewards=rewards, format_errors={"speaker": speaker_error, "listener": unparsable},
                       success=success)
