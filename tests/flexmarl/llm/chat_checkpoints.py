"""Checkpoints shaped like the instruction-tuned ones users bring, built here (nothing downloaded).

Each family writes what its real checkpoints ship: special tokens and a Jinja chat template in that
family's style, the tokenizer's own bos/eos/pad choice, config.json with the architecture and
`tie_word_embeddings`, and a generation_config.json whose eos ids differ from config.json's:

- llama3: Llama architecture, tied embeddings (as Llama-3.2-1B), `<|begin_of_text|>` added by the
  tokenizer and written by the template, turns ended by `<|eot_id|>`, NO pad token; config.json's eos is
  `<|end_of_text|>`, generation_config.json's [`<|end_of_text|>`, `<|eom_id|>`, `<|eot_id|>`].
- chatml: Qwen2 architecture, untied, ChatML turns (`<|im_start|>` / `<|im_end|>`) with a default
  system prompt, pad `<|endoftext|>`; eos `<|im_end|>`, generation_config [`<|im_end|>`, `<|endoftext|>`].
- mistral: Llama architecture, untied, `<s>[INST] ... [/INST]`, raises on non-alternating roles, no pad
  token; eos `</s>` in both files (generation_config.json as a list).

The models are random and tiny (hidden 64, 2 layers): what is tested is that prompts, engines, stop
tokens and weight names behave as with the real ones, not what the models say.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import processors
from transformers import GenerationConfig, PreTrainedTokenizerFast

from flexmarl.llm.models import ARCHITECTURES, build_tokenizer
from flexmarl.llm.tasks import make_task

LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] | trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system = '' %}{%- endif %}"
    "{%- if system %}{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + system + '<|eot_id|>' }}{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

MISTRAL_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif %}"
    "{%- if message['role'] == 'user' %}{{- '[INST] ' + message['content'] + ' [/INST]' }}"
    "{%- else %}{{- ' ' + message['content'] + eos_token }}{%- endif %}"
    "{%- endfor %}"
)

FAMILIES = {
    "llama3": dict(arch="llama", tied=True, template=LLAMA3_TEMPLATE, bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None,
                   special=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                            "<|eom_id|>", "<|eot_id|>"],
                   config_eos="<|end_of_text|>", generation_eos=["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"]),
    "chatml": dict(arch="qwen2", tied=False, template=CHATML_TEMPLATE, bos=None, eos="<|im_end|>", pad="<|endoftext|>",
                   special=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                   config_eos="<|im_end|>", generation_eos=["<|im_end|>", "<|endoftext|>"]),
    "mistral": dict(arch="llama", tied=False, template=MISTRAL_TEMPLATE, bos="<s>", eos="</s>", pad=None,
                    special=["<unk>", "<s>", "</s>"], config_eos="</s>", generation_eos=["</s>"]),
}


def chat_tokenizer(family: str, corpus: list[str]) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `corpus` with the family's special tokens, bos/eos/pad and template."""
    spec = FAMILIES[family]
    base = build_tokenizer(corpus, vocab_size=512)
    backend = base.backend_tokenizer
    backend.add_special_tokens(spec["special"])
    if spec["bos"]:  # as Llama's and Mistral's tokenizers: every encode with special tokens starts with bos
        bos_id = backend.token_to_id(spec["bos"])
        backend.post_processor = processors.TemplateProcessing(
            single=f"{spec['bos']} $A", pair=f"{spec['bos']} $A {spec['bos']} $B", special_tokens=[(spec["bos"], bos_id)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=spec["bos"], eos_token=spec["eos"],
                                        pad_token=spec["pad"], unk_token="<unk>" if "<unk>" in spec["special"] else None)
    tokenizer.chat_template = spec["template"]
    return tokenizer


def build_chat_checkpoint(out_dir, family: str, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A random tiny checkpoint of `family` saved with save_pretrained, as a hub checkpoint looks on disk."""
    spec = FAMILIES[family]
    corpus = make_task("speaker_listener").corpus() + ["system user assistant You are a helpful assistant. [INST] [/INST]"]
    tokenizer = chat_tokenizer(family, corpus)
    config_cls, model_cls = ARCHITECTURES[spec["arch"]]
    token_id = tokenizer.convert_tokens_to_ids
    config = config_cls(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1, head_dim=hidden // 2,
                        max_position_embeddings=256, tie_word_embeddings=spec["tied"],
                        bos_token_id=token_id(spec["bos"]) if spec["bos"] else None,
                        eos_token_id=token_id(spec["config_eos"]),
                        pad_token_id=token_id(spec["pad"]) if spec["pad"] else None, torch_dtype="float32")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=[token_id(t) for t in spec["generation_eos"]],
        pad_token_id=config.pad_token_id, do_sample=True, temperature=0.6, top_p=0.9)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def generation_eos_ids(model_dir) -> list[int]:
    return json.loads((Path(model_dir) / "generation_config.json").read_text())["eos_token_id"]
