"""Tiny local language models: a byte-level BPE tokenizer trained on a task's text and a small random
decoder (Qwen2 or Llama architecture), saved as a Hugging Face checkpoint directory (weights, config,
tokenizer) that transformers and vLLM both load. No hub downloads: everything is built here.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"

# Qwen2's pre-tokenizer split: transformers loads any checkpoint whose model_type is qwen2 with Qwen2Tokenizer,
# which rebuilds the tokenizer from vocab and merges with this split and NFC; building ours the same way
# makes the tokenizer a checkpoint loads (transformers or vLLM) encode exactly as the one we trained.
QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# arch -> (config class, model class); both take the same size arguments.
ARCHITECTURES = {
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "llama": (LlamaConfig, LlamaForCausalLM),
}


def build_tokenizer(corpus: list[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `corpus` (every byte stays encodable), with eos and pad special tokens
    and no automatically added tokens (prompt and completion ids concatenate exactly)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)


def build_tiny_model(out_dir, tokenizer, arch: str = "qwen2", hidden: int = 128, layers: int = 2, heads: int = 2,
                     head_dim: int = 64, max_positions: int = 256, seed: int = 0, intermediate: int | None = None,
                     tied: bool = False) -> Path:
    """A randomly initialised fp32 causal LM sized for `tokenizer`, saved with safetensors to `out_dir`
    together with the tokenizer. Same seed, same weights. `intermediate` defaults to 4 x hidden; `tied`
    shares the input and output embeddings (as many real checkpoints do; the project's own models do not)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; known: {sorted(ARCHITECTURES)}")
    config_cls, model_cls = ARCHITECTURES[arch]
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate or 4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=head_dim,
        max_position_embeddings=max_positions,
        # Untied by default: the trainer and the engines then see the same parameter list, lm_head included.
        tie_word_embeddings=tied,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        torch_dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config).to(torch.float32)
    return save_model(model, tokenizer, out_dir)


def save_model(model, tokenizer, out_dir) -> Path:
    """Weights (safetensors), config, generation config and tokenizer into one directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@contextmanager
def torch_threads(n: int):
    """Run the block with n torch CPU threads. Tiny models are fastest on one thread, and several
    threads on a shared, busy machine spin-wait each other (20x slower measured on 2 loaded cores)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
"""A checkpoint has its tokenizer when at least one of these is there."""


def checkpoint_problem(path) -> str | None:
    """Why the folder is not a checkpoint the trainers and engines can load (None: it looks complete):
    config.json, safetensors weights (what the weight pushes read) and a tokenizer must be there."""
    folder = Path(path)
    if not folder.is_dir():
        return f"{folder} is not a directory"
    if not (folder / "config.json").exists():
        return f"{folder} has no config.json"
    if not any(folder.glob("*.safetensors")):
        others = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
        hint = f" ({', '.join(others)} found: re-save it with save_pretrained(safe_serialization=True))" if others else ""
        return f"{folder} has config.json but no *.safetensors weights{hint}"
    if not any((folder / name).exists() for name in TOKENIZER_FILES):
        return f"{folder} has no tokenizer ({', '.join(TOKENIZER_FILES)})"
    return None


def load_tokenizer(path) -> PreTrainedTokenizerFast:
    return AutoTokenizer.from_pretrained(str(path))


def prompt_token_ids(tokenizer, prompt: str) -> list[int]:
    """The token ids an agent's model gets for one user prompt. A checkpoint with a chat template
    (every instruct checkpoint) gets the prompt as a user turn plus the assistant header; the template is
    rendered to text and encoded without adding special tokens (the template writes bos itself), which
    is what transformers does inside `apply_chat_template` and does not depend on that method's return
    type (a list of ids before transformers 5, a BatchEncoding since). Without a template: the plain
    encoding."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer.encode(prompt))


def load_causal_lm(path, device: str | torch.device = "cpu"):
    """The checkpoint at `path` in fp32 on `device`, in eval mode (callers that train switch it)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return model.to(device).eval()


@torch.no_grad()
def sample_tokens(model, prompt_ids: list[int], max_new_tokens: int, temperature: float, eos_token_id: int,
                  generator: torch.Generator | None = None) -> tuple[list[int], list[float]]:
    """Sample a completion token by token (KV cache), stopping after eos or max_new_tokens. Returns the
    token ids (eos included when sampled) and each token's log-prob under the raw model (before the
    temperature), the convention of the engines' behaviour logprobs. temperature 0 = greedy."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids], device=device)
    past = None
    tokens: list[int] = []
    logprobs: list[float] = []
    for _ in range(max_new_tokens):
        out = model(input_ids=ids, past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits = out.logits[0, -1].float()
        raw_logp = torch.log_softmax(logits, -1)
        if temperature <= 0:
            token = int(logits.argmax())
        else:
            probs = torch.softmax(logits / temperature, -1)
            token = int(torch.multinomial(probs.cpu(), 1, generator=generator))
        tokens.append(token)
        logprobs.append(float(raw_logp[token]))
        if token == eos_token_id:
            break
        ids = torch.tensor([[token]], device=device)
    return tokens, logprobs
