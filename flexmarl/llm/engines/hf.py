"""The transformers engine behind the contract of flexmarl/llm/engines/base.py (batched generation with a KV
cache; LoRA adapters through PEFT)."""

from __future__ import annotations

import torch

from flexmarl.llm import weights as weight_io
from flexmarl.llm.cpus import bind_this_thread
from flexmarl.llm.engines.base import BatchingEngine, _Call


class HFEngine(BatchingEngine):
    """transformers model, the same contract. Calls that arrive together run as one left-padded batch
    with a KV cache, token by token, until all of them end; calls arriving meanwhile form the next batch.
    Same positional arguments as VLLMEngine (kv_cache_gib and gpu_memory_utilization are unused: the KV
    cache lives only as long as a batch; seed too: every call has its own). With `adapters` the model is
    a PEFT model holding each of them over the base; a batch mixes calls of different adapters (PEFT's
    `adapter_names`, one per row)."""

    def __init__(self, model_dir: str, version: int = 0, seed: int = 0, max_model_len: int = 256,
                 omp_threads_bind: str = "nobind", kv_cache_gib: float = 0.25, device: str = "cpu",
                 gpu_memory_utilization: float = 0.3, engine_name: str = "hf", max_batch: int = 64,
                 adapters: dict | None = None):
        self.seed, self.omp_threads_bind, self.device, self.max_batch = seed, omp_threads_bind, device, max_batch
        self._pending: list[_Call] = []
        super().__init__(model_dir, version, engine_name, max_model_len, adapters)

    def _build(self) -> None:
        from transformers import AutoModelForCausalLM

        bind_this_thread(self.omp_threads_bind)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"engine {self.engine_name}: device='cuda' but no CUDA device is visible")
        if self.adapters:
            from flexmarl.llm.lora import AdapterHost

            self.host = AdapterHost(self.model_dir, self.device)
            for name, spec in self.adapters.items():  # each starts as the base (B = 0) until its first push
                self.host.add(name, spec)
            self.model = self.host.model
        else:
            self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32).to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        eos = self.model.config.eos_token_id if eos is None else eos
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        pad = self.model.generation_config.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids, default=0)

    def _admit(self, call: _Call) -> None:
        self._pending.append(call)

    @torch.no_grad()
    def _step(self):
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
        width = max(len(c.prompt_ids) for c in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, c in enumerate(batch):  # left padding: every row's next token is at the last column
            ids[i, width - len(c.prompt_ids):] = torch.tensor(c.prompt_ids)
            mask[i, width - len(c.prompt_ids):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        generators = [torch.Generator(device=self.device).manual_seed(c.seed) for c in batch]
        # PEFT runs each row with its call's adapter ("__base__": none)
        adapters = {"adapter_names": [c.adapter or "__base__" for c in batch]} if self.adapters else {}
        tokens: list[list[int]] = [[] for _ in batch]
        logprobs: list[list[float]] = [[] for _ in batch]
        reasons: list[str | None] = [None] * len(batch)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **adapters)
        while True:
            logits = out.logits[:, -1].float()
            raw_logp = torch.log_softmax(logits, -1)
            next_ids = torch.full((len(batch),), self.pad_id, dtype=torch.long)
            for i, c in enumerate(batch):
                if reasons[i] is not None:
                    continue
                if c.temperature <= 0:
                    token = int(logits[i].argmax())
                else:
                    probs = torch.softmax(logits[i] / c.temperature, -1)
                    token = int(torch.multinomial(probs, 1, generator=generators[i]))
                tokens[i].append(token)
                logprobs[i].append(float(raw_logp[i, token]))
                next_ids[i] = token
                if token in self.eos_ids:
                    reasons[i] = "stop"
                elif len(tokens[i]) >= c.max_tokens:
                    reasons[i] = "length"
            if all(r is not None for r in reasons):
                break
            mask = torch.cat([mask, torch.ones((len(batch), 1), dtype=mask.dtype, device=self.device)], 1)
            positions = positions[:, -1:] + 1
            out = self.model(input_ids=next_ids[:, None].to(self.device), attention_mask=mask, position_ids=positions,
                             past_key_values=out.past_key_values, use_cache=True, **adapters)
        return [(c, tokens[i], logprobs[i], reasons[i]) for i, c in enumerate(batch)]

    @torch.no_grad()
    def _apply(self, weights, path) -> None:
        if weights is None:
            weights = weight_io.drop_tied_aliases(weight_io.read_weights(path), self._tied)
        state = self.model.state_dict()  # shares storage with the parameters (a tied lm_head included)
        for name, tensor in weights.items():
            state[name].copy_(tensor)

    def _apply_adapter(self, adapter, weights, version) -> None:
        self.host.load_weights(adapter, weights)

    def _shutdown(self) -> None:
        del self.model
