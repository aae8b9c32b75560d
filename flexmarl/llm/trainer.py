"""LLM group trainer: one per model group, owning a Hugging Face causal LM and its Adam state.

The streamed update plan (epochs x minibatches, micro-batches trained as they arrive, later epochs
shuffled by (seed, version, epoch)) is `flexmarl.streaming.StreamingTrainer`'s, as for the MARL trainer;
this class supplies the forward/backward of one micro-batch and the optimizer step.

A micro-batch (one rollout request's samples of this group, built by the workflow worker) is
`{"prompt_ids": [[int]], "completion_ids": [[int]], "logp": [[float]], "advantages": [float], "versions": [int]}`,
one entry per sample (agent call): `logp` are the engine's behaviour log-probs of the completion tokens,
`advantages` the group-normalised advantage of the sample's trajectory.

Loss: the registered group loss per completion token (`llm.loss`: GRPO, SA-GCPO, GBPO) against the
behaviour log-probs, plus `llm.kl_coef` times GRPO's k3 KL to the frozen initial model, aggregated with
`llm.loss_agg`. A micro-batch's backward is of the summed loss; `step(denominator)` divides by the
minibatch's total tokens (token_mean) or sequences (seq_mean_token_mean), so an update does not depend
on how the minibatch was cut into micro-batches nor on their arrival order. Micro-batches are
self-contained: their advantages were final when the workflow worker released them (complete groups).
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from flexmarl.algorithms import POLICY_LOSSES, loss_hparams
from flexmarl.algorithms.losses import aggregate_token_loss, kl_penalty
from flexmarl.config import Config
from flexmarl.config.adapters import LoraAdapter
from flexmarl.llm.cpus import bind_process, trainer_binding
from flexmarl.llm import weights as weight_io
from flexmarl.llm.lora import START_SUFFIX, AdapterHost, AdapterState, load_adapter_weights
from flexmarl.llm.models import load_causal_lm
from flexmarl.devices import resolve_device, state_to_cpu
from flexmarl.streaming import StreamingTrainer


@dataclass
class TokenBatch:
    """Samples packed for one forward: right-padded [prompt + completion] rows and the completion tokens."""

    input_ids: torch.Tensor
    """[B, L] prompt then completion ids, right-padded (pad id 0; padding is masked out of attention)."""
    attention_mask: torch.Tensor
    """[B, L] 1 on the real tokens."""
    positions: torch.Tensor
    """[B, T] index of the logits that predict each completion token (the token before it)."""
    targets: torch.Tensor
    """[B, T] completion token ids, right-padded."""
    mask: torch.Tensor
    """[B, T] 1.0 on real completion tokens, 0.0 on padding."""
    first_position: int
    """The smallest of `positions` (the shortest prompt's last token): logits before it are not needed."""
    old_logp: torch.Tensor | None = None
    """[B, T] behaviour log-probs (0 on padding); None when only log-probs are asked for."""
    advantages: torch.Tensor | None = None
    """[B] one advantage per sample."""
    ref_logp: torch.Tensor | None = None
    """[B, T] log-probs of the frozen reference model (computed once: it never changes)."""


def pack_tokens(prompt_ids: list[list[int]], completion_ids: list[list[int]], device) -> TokenBatch:
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("a sample with an empty prompt: its first completion token has no logits to come from")
    lengths = [len(p) + len(c) for p, c in zip(prompt_ids, completion_ids)]
    B, L, T = len(prompt_ids), max(lengths), max((len(c) for c in completion_ids), default=0)
    input_ids = torch.zeros(B, L, dtype=torch.long)
    attention_mask = torch.zeros(B, L, dtype=torch.long)
    positions = torch.zeros(B, T, dtype=torch.long)
    targets = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        input_ids[i, : lengths[i]] = torch.tensor(list(p) + list(c), dtype=torch.long)
        attention_mask[i, : lengths[i]] = 1
        positions[i, : len(c)] = torch.arange(len(p) - 1, len(p) - 1 + len(c))
        targets[i, : len(c)] = torch.tensor(list(c), dtype=torch.long)
        mask[i, : len(c)] = 1.0
    return TokenBatch(input_ids.to(device), attention_mask.to(device), positions.to(device), targets.to(device),
                      mask.to(device), min(len(p) for p in prompt_ids) - 1)


def completion_logprobs(model, batch: TokenBatch) -> torch.Tensor:
    """[B, T] log-probs of the completion tokens under `model` (raw logits, no temperature; 0 on padding).

    Only the last positions, from the shortest prompt's end on, go through the output layer
    (`logits_to_keep`): with a real vocabulary the logits of whole prompts would dominate memory."""
    first = batch.first_position
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False,
                   logits_to_keep=batch.input_ids.shape[1] - first).logits
    rows = torch.arange(len(batch.positions), device=logits.device)[:, None]
    kept = (batch.positions - first).clamp(min=0)  # padding's position 0 may lie before `first`
    logp = torch.log_softmax(logits[rows, kept].float(), -1)
    logp = logp.gather(-1, batch.targets[..., None])[..., 0]
    return torch.where(batch.mask > 0, logp, torch.zeros_like(logp))


class LLMGroupTrainer(StreamingTrainer):
    """A model group's trainer: the whole model, or (`adapter`) a LoRA adapter over the base `model_dir`,
    on an `AdapterHost` that other adapter groups of the same trainer slot share (`host`)."""

    def __init__(self, cfg: Config, group: str, model_dir: str, seed: int, adapter: LoraAdapter | None = None,
                 host: AdapterHost | None = None, device: str = "cpu"):
        llm = cfg.llm
        super().__init__(group, seed, cfg.trainer.epochs, cfg.trainer.num_minibatches)
        self.cfg, self.group, self.model_dir, self.adapter = cfg, group, str(model_dir), adapter
        bind_process(trainer_binding(cfg))  # off the engines' cores (flexmarl/llm/cpus.py)
        self.device = resolve_device(device)  # the runtime's answer for this actor (Runtime.device_for)
        # Eval mode throughout: no dropout, so the trainer's log-probs are the engines' (the ratio is 1
        # on-policy) and an update is a deterministic function of its inputs.
        if adapter is None:
            self.host = None
            self.model = load_causal_lm(self.model_dir, self.device).requires_grad_(True)
            self.state_module = self.model
            """What an agent's training state is (with the optimizer's): what a trainer slot swaps."""
            self.reference = copy.deepcopy(self.model).requires_grad_(False) if llm.kl_coef > 0 else None
        else:  # the base frozen and held once per host; the KL reference is the adapter's start (frozen)
            self.host = host or AdapterHost(self.model_dir, self.device)
            self.model = self.host.add(group, adapter, seed)
            self.state_module = AdapterState(list(self.host.named_parameters(group).values()))
            self.reference = None
            if adapter.init:
                start = load_adapter_weights(adapter.init)
                self.host.load_weights(group, start)
                if llm.kl_coef > 0:  # a second, frozen adapter: the policy the run started from
                    self.reference = f"{group}{START_SUFFIX}"
                    self.host.add(self.reference, adapter, seed)
                    self.host.load_weights(self.reference, start)
        self.opt = torch.optim.Adam(self.state_module.parameters(), lr=llm.lr)
        self.loss = POLICY_LOSSES[llm.loss]
        self.hparams = loss_hparams(cfg.trainer)
        self._tied = weight_io.ties_embeddings(self.model_dir)
        self._tokens_trained = 0

    def _policy(self):
        """The model to run: with this group's adapter active when the base is shared."""
        return self.model if self.host is None else self.host.activate(self.group)

    # -- weights and checkpoint state -------------------------------------------------------------
    def get_weights(self) -> dict[str, torch.Tensor]:
        """What an engine loads: the checkpoint's tensor names (a tied output embedding is the input one,
        so `lm_head.weight` is left out as in the checkpoint), or an adapter group's adapter alone (PEFT's
        file names); CPU fp32 copies that later steps leave alone."""
        if self.host is not None:
            return self.host.weights(self.group)
        state = weight_io.drop_tied_aliases(self.model.state_dict(), self._tied)
        return {name: t.detach().to("cpu", torch.float32, copy=True) for name, t in state.items()}

    def get_state(self) -> dict:
        """A deep copy on the CPU: later steps must not change a state that was already handed out. An
        adapter group's state is its adapter (`adapter`, PEFT file names) and optimizer, not the base."""
        weights = {"model": self.model.state_dict()} if self.host is None else {"adapter": self.host.weights(self.group)}
        return state_to_cpu({"version": self.version, **weights, "optimizer": self.opt.state_dict()})

    def set_state(self, state: dict) -> None:
        if self.host is None:
            self.model.load_state_dict(state["model"])
        else:
            self.host.load_weights(self.group, state["adapter"])
        self.opt.load_state_dict(state["optimizer"])
        self.version = int(state["version"])

    @torch.no_grad()
    def token_logprobs(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> list[list[float]]:
        """Current log-probs of each completion's tokens given its prompt."""
        if not prompt_ids:
            return []
        logp = completion_logprobs(self._policy(), pack_tokens(prompt_ids, completion_ids, self.device)).cpu()
        return [logp[i, : len(c)].tolist() for i, c in enumerate(completion_ids)]

    @torch.no_grad()
    def _reference_logprobs(self, batch: TokenBatch) -> torch.Tensor | None:
        """Log-probs of the frozen initial model (an adapter group's: the base, or the base with the adapter
        it started from, `init`); None without KL."""
        if self.cfg.llm.kl_coef <= 0:
            return None
        if self.host is None:
            return completion_logprobs(self.reference, batch)
        if self.reference is not None:
            try:
                return completion_logprobs(self.host.activate(self.reference), batch)
            finally:
                self.host.activate(self.group)
        with self._policy().disable_adapter():
            return completion_logprobs(self.model, batch)

    # -- hooks of the streamed plan (flexmarl.streaming) --------------------------------------------
    def begin_update(self, num_micro_batches: int) -> None:
        super().begin_update(num_micro_batches)
        self._tokens_trained = 0

    def micro_batch_tensors(self, payload: dict) -> TokenBatch | None:
        """Packed tensors on the trainer's device, with the reference log-probs; None for no samples."""
        if not payload["prompt_ids"]:
            return None
        batch = pack_tokens(payload["prompt_ids"], payload["completion_ids"], self.device)
        old = torch.zeros(batch.mask.shape)
        for i, (logp, completion) in enumerate(zip(payload["logp"], payload["completion_ids"], strict=True)):
            if len(logp) != len(completion):
                raise ValueError(f"trainer {self.group!r}: sample {i} has {len(completion)} completion tokens but "
                                 f"{len(logp)} behaviour log-probs")
            old[i, : len(logp)] = torch.tensor(logp, dtype=torch.float32)
        batch.old_logp = old.to(self.device)
        batch.advantages = torch.as_tensor(payload["advantages"], dtype=torch.float32, device=self.device)
        batch.ref_logp = self._reference_logprobs(batch)
        return batch

    def train_micro_batch(self, mb: TokenBatch | None, first_epoch: bool) -> float:
        """Backward of the micro-batch's summed loss; returns its tokens or sequences (the denominator)."""
        if mb is None:
            return 0.0
        llm = self.cfg.llm
        with self._adapter_dropout():
            logp = completion_logprobs(self._policy(), mb)
        per_token = self.loss(logp, mb.old_logp, mb.advantages[:, None], **self.hparams)  # one advantage per output
        policy, denominator = aggregate_token_loss(per_token, mb.mask, llm.loss_agg)
        loss = policy
        kl = None
        if mb.ref_logp is not None:
            kl, _ = aggregate_token_loss(kl_penalty(logp, mb.ref_logp), mb.mask, llm.loss_agg)
            loss = loss + llm.kl_coef * kl
        loss.backward()

        with torch.no_grad():
            share = max(denominator, 1.0)
            tokens = mb.mask.sum().clamp(min=1.0)
            clipped = ((torch.exp(logp - mb.old_logp) - 1).abs() > self.cfg.trainer.clip_eps).float()
            self.record_stat("losses/policy", float(policy.detach()) / share)
            if kl is not None:
                self.record_stat("losses/kl", float(kl.detach()) / share)
            self.record_stat("losses/clip_frac", float((clipped * mb.mask).sum() / tokens))
        self._tokens_trained += int(mb.mask.sum())
        return denominator

    def step(self, denominator: float) -> None:
        """Average the accumulated gradient over the minibatch's `denominator`, clip, and apply it."""
        params = [p for p in self.state_module.parameters() if p.grad is not None]
        if not params:  # a minibatch without samples
            return
        scale = 1.0 / max(denominator, 1.0)
        for p in params:
            p.grad.mul_(scale)
        max_norm = self.cfg.trainer.max_grad_norm if self.cfg.trainer.max_grad_norm > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        self.record_stat("losses/grad_norm", float(norm))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    @contextmanager
    def _adapter_dropout(self):
        """An adapter's dropout modules in train mode for a training forward (only when its dropout > 0:
        it makes updates depend on the RNG, and the engines never drop)."""
        modules = self.host.dropout_modules(self.group) if self.adapter is not None and self.adapter.dropout > 0 else []
        for module in modules:
            module.train()
        try:
            yield
        finally:
            for module in modules:
                module.eval()

    def update_metrics(self) -> dict:
        """`llm/tokens_trained`: completion tokens through forward/backward in this update (all epochs)."""
        return {"llm/tokens_trained": float(self._tokens_trained)}
