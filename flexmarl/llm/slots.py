"""Agent-centric training with on-demand binding: model groups time-share `resources.trainer_slots`
trainer actors (FlexMARL, arXiv:2602.09578: "a trainer holds its device only while it has work").

Group i lives on slot i % n. A slot holds one group's training state on its device at a time (the
"resident" group); a call for another group first swaps the resident one out (weights, buffers, Adam
state and the gradients accumulated so far in the current minibatch, through `flexmarl.state_swap`, to
host memory or to the Ray object store: `llm.swap_to`) and the called group's state in. Each group keeps
its `LLMGroupTrainer` object on the slot (the module shells with empty tensors, its version and its
streamed-update bookkeeping), so nothing but tensors moves and the sequence of updates is exactly the
one a dedicated trainer would run: training with swaps ends with the same parameters, bit for bit.

The orchestrator keeps talking to one handle per group (`SlotGroupHandle`): `runtime.call(handle,
"consume", ...)` becomes the slot's `call(group, "consume", ...)`, in-process or on Ray alike, so the
pipelines and checkpoints do not know slots exist.

A state swapped to the object store lives as long as the object does; when it is lost (its owner died,
or it was freed) the group's next call raises `TrainingStateLost` naming the group, and the group
accepts nothing but `set_state` (a checkpoint: `flexmarl train --resume`) from then on.
"""

from __future__ import annotations

import time

from flexmarl.config import Config
from flexmarl.state_swap import StateLostError, swap_in, swap_out


class TrainingStateLost(RuntimeError):
    """A model group's swapped-out training state could not be brought back."""


class TrainerSlot:
    """One trainer actor shared by several model groups; `call(group, method, *args)` runs one method of
    the LLM trainer contract (begin_update, consume, finish_update, update, get_weights, get_state,
    set_state, spans, token_logprobs) on that group, binding it first."""

    def __init__(self, cfg: Config, groups: list[tuple], where: str = "host", device: str = "cpu"):
        """groups: (name, model_dir, seed[, LoRA adapter]) of the groups on this slot; where: "host" or
        "remote"; device: the slot's (`Runtime.device_for`)."""
        self.cfg, self.where, self.device = cfg, where, device
        self.specs = {name: (model_dir, seed, *adapter) for name, model_dir, seed, *adapter in groups}
        self.trainers: dict = {}
        self.hosts: dict = {}
        """base model dir -> the AdapterHost all adapter groups over that base share (the base held once)."""
        """Each group's LLMGroupTrainer, built on its first call (its tensors empty while swapped out)."""
        self.swapped: dict = {}
        """group -> (model TrainingState, reference-model TrainingState or None) while swapped out."""
        self.lost: dict[str, str] = {}
        """group -> why its state is gone (only set_state brings it back)."""
        self.resident: str | None = None
        self.swaps = 0
        self.swap_spans: list[tuple[float, float]] = []
        """Wall-clock (start, end) of every bind that moved state, since the last `swap_stats`."""

    def call(self, group: str, method: str, *args):
        if group not in self.specs:
            raise KeyError(f"model group {group!r} is not on this trainer slot (it holds {sorted(self.specs)})")
        if group in self.lost:
            if method != "set_state":
                raise TrainingStateLost(self.lost[group])
            del self.lost[group]
            self.trainers.pop(group, None)  # rebuilt below, then the checkpoint is loaded into it
        return getattr(self._bind(group), method)(*args)

    def swap_stats(self) -> dict:
        """Swaps so far and the spans of the binds since the last call."""
        spans, self.swap_spans = self.swap_spans, []
        return {"swaps": self.swaps, "spans": spans}

    def _bind(self, group: str):
        if self.resident == group:
            return self.trainers[group]
        start = time.time()
        if self.resident is not None:
            self._swap_out(self.resident)
        self.resident = None
        if group in self.swapped:
            self._swap_in(group)
        elif group not in self.trainers:
            from flexmarl.llm.trainer import LLMGroupTrainer

            model_dir, seed, *adapter = self.specs[group]
            adapter = adapter[0] if adapter else None
            trainer = LLMGroupTrainer(self.cfg, group, model_dir, seed, adapter, self.hosts.get(model_dir), self.device)
            if trainer.host is not None:
                self.hosts[model_dir] = trainer.host
            self.trainers[group] = trainer
        self.resident = group
        self.swap_spans.append((start, time.time()))
        return self.trainers[group]

    def _swap_out(self, group: str) -> None:
        trainer = self.trainers[group]
        # gradients accumulated over the current minibatch's micro-batches must survive the swap; an
        # adapter group's state is its adapter (trainer.state_module), the shared base stays
        grads = [p.grad for p in trainer.state_module.parameters()]
        name = f"training state of model group {group!r}"
        model = swap_out(trainer.state_module, trainer.opt, {"grads": grads}, where=self.where, name=name)
        reference = (swap_out(trainer.reference, None, where=self.where, name=f"reference model of {group!r}")
                     if trainer.reference is not None else None)
        self.swapped[group] = (model, reference)
        self.swaps += 1

    def _swap_in(self, group: str) -> None:
        trainer = self.trainers[group]
        model, reference = self.swapped.pop(group)
        try:
            extra = swap_in(model, trainer.state_module, trainer.opt)
            if reference is not None:
                swap_in(reference, trainer.reference, None)
        except StateLostError as error:
            self.lost[group] = (f"model group {group!r} cannot train: its swapped-out training state is lost "
                                f"({error}); restore the run from its last checkpoint (flexmarl train --resume)")
            raise TrainingStateLost(self.lost[group]) from error
        for parameter, grad in zip(trainer.state_module.parameters(), extra["grads"]):
            parameter.grad = grad
        self.swaps += 1


class _SlotMethod:
    """`handle.method` of a group on a slot: callable in-process, `.remote(...)` on a Ray actor."""

    def __init__(self, slot, group: str, method: str):
        self.slot, self.group, self.method = slot, group, method

    def __call__(self, *args):
        return self.slot.call(self.group, self.method, *args)

    def remote(self, *args):
        return self.slot.call.remote(self.group, self.method, *args)


class SlotGroupHandle:
    """Looks like a group trainer to `runtime.call`; forwards to the group's slot."""

    def __init__(self, slot, group: str):
        self.slot, self.group = slot, group

    def __getattr__(self, method: str) -> _SlotMethod:
        if method.startswith("_"):
            raise AttributeError(method)
        return _SlotMethod(self.slot, self.group, method)


def make_slotted_trainers(runtime, cfg: Config, groups: list) -> dict[str, SlotGroupHandle]:
    """`resources.trainer_slots` slot actors on the training pool, group i on slot i % n (seeds as
    dedicated trainers get them, so both set-ups train identically)."""
    n = min(cfg.resources.trainer_slots, len(groups))
    members: list[list[tuple]] = [[] for _ in range(n)]
    for i, g in enumerate(groups):
        members[i % n].append((g.name, g.model_dir, cfg.run.seed * 1000 + i, g.adapter))
    slots = [runtime.create(TrainerSlot, cfg, m, cfg.llm.swap_to,
                            runtime.device_for(f"trainer-slot/{i}", cfg.trainer.device), actor=f"trainer-slot/{i}")
             for i, m in enumerate(members)]
    return {g.name: SlotGroupHandle(slots[i % n], g.name) for i, g in enumerate(groups)}
