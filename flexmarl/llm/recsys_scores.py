"""Language-model scenario agents as recommendation scoring policies (`flexmarl.recsys_eval.Scores`), so
the recsys suite evaluates them on the same sessions and offline protocol as every other method.

A scenario scores each of its candidates by the log-likelihood of the candidate's code under its agent's
model, given the prompt the agent sees in `recsys_sessions` sessions (constrained decoding's ranking:
greedy over the candidates). The prompt's tokens are run once per user and their KV cache is shared by
that user's K candidates.
"""

from __future__ import annotations

import numpy as np
import torch

from flexmarl.llm.tasks.recsys import RecsysSessions, code_text


@torch.no_grad()
def candidate_logprobs(model, prompts: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """[n, K]: sum over its tokens of log p(code k | prompt) for prompts [n, P] (one length) and codes
    [n, K, C] token ids (every code C tokens)."""
    n, K, C = codes.shape
    out = model(input_ids=prompts, use_cache=True)
    first = torch.log_softmax(out.logits[:, -1].float(), -1)  # distribution of each code's first token
    total = first.gather(1, codes[:, :, 0]).clone()  # [n, K]
    if C > 1:
        cache = out.past_key_values
        cache.batch_repeat_interleave(K)  # each user's prompt cache, once per candidate
        flat = codes.reshape(n * K, C)
        rest = torch.log_softmax(model(input_ids=flat[:, :-1], past_key_values=cache).logits.float(), -1)
        total += rest.gather(2, flat[:, 1:, None])[..., 0].sum(1).view(n, K)
    return total


def llm_scores(task: RecsysSessions, models: dict, tokenizer, chunk: int = 64):
    """A `Scores` function: `models` maps each scenario agent to its causal LM (one model for all agents
    when they share it), `tokenizer` is the task models' tokenizer."""
    codes = task.world.ids.codes
    code_ids = [tokenizer.encode(code_text(code)) for code in codes]
    if len({len(ids) for ids in code_ids}) != 1:
        raise ValueError("every item code must encode to as many tokens (build the models with the task's "
                         "vocabulary_tokens, one token per code position)")
    code_ids = torch.tensor(code_ids)

    def scores(obs: np.ndarray, scenario: int, users: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        agent = task.agents[scenario]
        model = models[agent]
        prompts = [tokenizer.encode(task.prompt(agent, task.user_history(int(u)))) for u in users]
        out = np.zeros(candidates.shape)
        by_length: dict[int, list[int]] = {}
        for row, ids in enumerate(prompts):  # prompts of one length batch without padding
            by_length.setdefault(len(ids), []).append(row)
        for rows in by_length.values():
            for start in range(0, len(rows), chunk):
                part = rows[start:start + chunk]
                value = candidate_logprobs(model, torch.tensor([prompts[r] for r in part]),
                                           code_ids[torch.as_tensor(candidates[part])])
                out[part] = value.numpy()
        return out

    return scores
