"""Language-model scenario agents as recommendation scoring policies (`flexmarl.recsys_eval.Scores`), so
the recsys suite evaluates them on the same sessions and offline protocol as every other method.

A scenario scores each of its candidates by the log-likelihood of the candidate's code under its agent's
model, given the prompt the agent sees in `recsys_sessions` sessions (constrained decoding's ranking:
greedy over the candidates). The prompt's tokens are run once per user and their KV cache is shared by
that user's candidates.
"""

from __future__ import annotations

import numpy as np
import torch

from flexmarl.llm.tasks.recsys import RecsysSessions, code_text


@torch.no_grad()
def pair_logprobs(model, prompts: torch.Tensor, rows: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """[m]: sum over its tokens of log p(code | prompt) for prompts [n, P] (one length) and m (prompt row,
    code) pairs: `rows` [m] indexes the prompts, `codes` [m, C] are token ids (every code C tokens)."""
    out = model(input_ids=prompts, use_cache=True)
    first = torch.log_softmax(out.logits[:, -1].float(), -1)  # distribution of each code's first token
    total = first[rows, codes[:, 0]]
    if codes.shape[1] > 1:
        cache = out.past_key_values
        cache.batch_select_indices(rows)  # each pair continues its prompt's cache
        rest = torch.log_softmax(model(input_ids=codes[:, :-1], past_key_values=cache).logits.float(), -1)
        total = total + rest.gather(2, codes[:, 1:, None])[..., 0].sum(1)
    return total


def llm_scores(task: RecsysSessions, models: dict, tokenizer, chunk: int = 128):
    """A `Scores` function: `models` maps each scenario agent to its causal LM (one model for all agents
    when they share it), `tokenizer` is the task models' tokenizer. A (scenario, user, item) score is
    computed once and remembered: the prompt depends on the user only, and a session's candidate lists
    overlap from step to step, so most candidates of a later step were scored before."""
    codes = task.world.ids.codes
    code_ids = [tokenizer.encode(code_text(code)) for code in codes]
    if len({len(ids) for ids in code_ids}) != 1:
        raise ValueError("every item code must encode to as many tokens (build the models with the task's "
                         "vocabulary_tokens, one token per code position)")
    code_ids = torch.tensor(code_ids)
    known: dict[tuple[int, int, int], float] = {}

    def scores(obs: np.ndarray, scenario: int, users: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        agent = task.agents[scenario]
        missing: dict[int, list[int]] = {}
        for user, row in zip(users.tolist(), candidates.tolist()):
            wanted = [item for item in row if (scenario, user, item) not in known]
            if wanted:
                missing.setdefault(user, []).extend(wanted)
        by_length: dict[int, list[tuple[int, list[int]]]] = {}  # prompts of one length batch without padding
        for user, items in missing.items():
            prompt = tokenizer.encode(task.prompt(agent, task.user_history(user)))
            by_length.setdefault(len(prompt), []).append((user, prompt, sorted(set(items))))
        for group in by_length.values():
            for start in range(0, len(group), chunk):
                part = group[start:start + chunk]
                rows = [r for r, (_, _, items) in enumerate(part) for _ in items]
                items = [item for _, _, wanted in part for item in wanted]
                value = pair_logprobs(models[agent], torch.tensor([prompt for _, prompt, _ in part]),
                                      torch.tensor(rows), code_ids[items])
                for r, item, v in zip(rows, items, value.tolist()):
                    known[(scenario, part[r][0], item)] = v
        return np.array([[known[(scenario, user, item)] for item in row]
                         for user, row in zip(users.tolist(), candidates.tolist())]).reshape(candidates.shape)

    return scores
