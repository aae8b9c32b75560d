"""Supervised warm start of a tiny policy on a task's (prompt, completion) examples, so that RL starts
from a policy that follows the output format and sometimes succeeds (as a pretrained LLM would)."""

from __future__ import annotations

import numpy as np
import torch


def tokenize_examples(tokenizer, examples: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids + eos) per example, each text encoded on its own, as the engines
    see them (prompt ids, then generated ids)."""
    eos = tokenizer.eos_token_id
    return [(tokenizer.encode(prompt), tokenizer.encode(completion) + [eos]) for prompt, completion in examples]


def completion_batch(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input ids, attention mask and target labels (-100 except on completion tokens)."""
    length = max(len(p) + len(c) for p, c in pairs)
    ids = torch.full((len(pairs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), length), dtype=torch.long)
    labels = torch.full((len(pairs), length), -100, dtype=torch.long)
    for row, (prompt, completion) in enumerate(pairs):
        n = len(prompt) + len(completion)
        ids[row, :n] = torch.tensor(prompt + completion)
        mask[row, :n] = 1
        labels[row, len(prompt):n] = torch.tensor(completion)
    return ids, mask, labels


def completion_loss(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the completion tokens of the batch."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                                             ignore_index=-100)


def warm_start(model, tokenizer, examples: list[tuple[str, str]], steps: int, lr: float = 3e-3, batch: int = 32,
               seed: int = 0, warmup_steps: int = 0, max_grad_norm: float | None = None) -> list[float]:
    """`steps` Adam steps on batches drawn (seeded) from `examples`, the learning rate rising linearly over
    the first `warmup_steps`; returns the loss of every step. The model is trained in place and left in
    eval mode."""
    pairs = tokenize_examples(tokenizer, examples)
    rng = np.random.default_rng(seed)
    device = next(model.parameters()).device
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(warmup_steps, 1)))
    losses: list[float] = []
    model.train()
    for _ in range(steps):
        chosen = rng.integers(len(pairs), size=batch)
        ids, mask, labels = (t.to(device) for t in completion_batch([pairs[i] for i in chosen], tokenizer.pad_token_id))
        loss = completion_loss(model, ids, mask, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses
