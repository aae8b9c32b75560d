import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from flexmarl.llm.models import build_tiny_model, build_tokenizer, load_causal_lm, load_tokenizer, sample_tokens
from flexmarl.llm.tasks import make_task
from flexmarl.llm.warm_start import completion_batch, tokenize_examples, warm_start

SMALL = dict(hidden=32, layers=1, heads=2, head_dim=16, max_positions=64)
ODD_TEXT = ["digits 12345 and 3.14", "Ünïcödé ☃ text", "two\nlines\n\n  spaced   out", "<|endoftext|> inside"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(make_task("speaker_listener").corpus(), vocab_size=512)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_a_saved_checkpoint_loads_with_the_same_tokenizer_and_weights(tmp_path, tokenizer, arch):
    path = build_tiny_model(tmp_path / arch, tokenizer, arch=arch, seed=3, **SMALL)
    assert (path / "model.safetensors").exists() and (path / "config.json").exists()
    loaded = load_tokenizer(path)
    # transformers picks the tokenizer class by model type (Qwen2Tokenizer rebuilds the pre-tokenizer):
    # the loaded one must still encode exactly like the trained one.
    for text in make_task("speaker_listener").corpus()[:200] + ODD_TEXT:
        assert loaded.encode(text) == tokenizer.encode(text), text
    assert (loaded.eos_token_id, loaded.pad_token_id) == (tokenizer.eos_token_id, tokenizer.pad_token_id)
    model = load_causal_lm(path)
    assert model.config.model_type == arch and model.config.vocab_size == len(tokenizer)
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert not model.training and all(p.dtype == torch.float32 for p in model.parameters())
    saved = load_file(path / "model.safetensors")
    assert "lm_head.weight" in saved and all(t.dtype == torch.float32 for t in saved.values())


def test_tokenizer_has_distinct_special_tokens_adds_none_and_round_trips(tokenizer):
    assert tokenizer.eos_token_id != tokenizer.pad_token_id and len(tokenizer) <= 512
    assert tokenizer.encode("red circle")[0] not in (tokenizer.eos_token_id, tokenizer.pad_token_id)
    for text in ODD_TEXT[:3] + [" B", "speaker: target red circle; others blue star. message: red"]:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    # Frequent task words are single tokens (short prompts).
    assert all(len(tokenizer.encode(" " + w)) == 1 for w in ("red", "yellow", "triangle", "message"))


def test_same_seed_same_weights_other_seed_other_weights(tmp_path, tokenizer):
    a, b, c = (load_file(build_tiny_model(tmp_path / name, tokenizer, seed=seed, **SMALL) / "model.safetensors")
               for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])
    with pytest.raises(ValueError, match="qwen2"):
        build_tiny_model(tmp_path / "d", tokenizer, arch="gpt9")


def test_sampling_is_seeded_and_its_logprobs_are_the_raw_models(tmp_path, tokenizer):
    model = load_causal_lm(build_tiny_model(tmp_path / "m", tokenizer, **SMALL))
    prompt = tokenizer.encode("listener: message red. A red circle, B blue star. answer:")
    eos = tokenizer.eos_token_id
    first = sample_tokens(model, prompt, 6, 1.3, eos, torch.Generator().manual_seed(5))
    again = sample_tokens(model, prompt, 6, 1.3, eos, torch.Generator().manual_seed(5))
    assert first == again and 1 <= len(first[0]) <= 6
    tokens, logprobs = first
    with torch.no_grad():
        full = torch.log_softmax(model(torch.tensor([prompt + tokens])).logits[0].float(), -1)
    expected = [float(full[len(prompt) - 1 + i, t]) for i, t in enumerate(tokens)]
    assert np.allclose(logprobs, expected, atol=1e-4)
    greedy, _ = sample_tokens(model, prompt, 3, 0.0, eos)
    assert greedy[0] == int(full[len(prompt) - 1].argmax())


def test_labels_cover_completion_tokens_and_eos_only(tokenizer):
    pairs = tokenize_examples(tokenizer, [("speaker: target red circle. message:", " red"), ("x:", " blue star")])
    ids, mask, labels = completion_batch(pairs, tokenizer.pad_token_id)
    for row, (prompt, completion) in enumerate(pairs):
        assert completion[-1] == tokenizer.eos_token_id
        n = len(prompt) + len(completion)
        assert labels[row, : len(prompt)].eq(-100).all() and labels[row, n:].eq(-100).all()
        assert labels[row, len(prompt):n].tolist() == completion and mask[row].sum() == n
        assert ids[row, n:].eq(tokenizer.pad_token_id).all()


def test_warm_start_is_deterministic_and_learns_the_completions(tmp_path, tokenizer):
    examples = [(f"speaker: target {c} circle. message:", f" {c}") for c in ("red", "blue", "green", "yellow")]
    runs = []
    for name in ("a", "b"):
        model = load_causal_lm(build_tiny_model(tmp_path / name, tokenizer, **SMALL))
        runs.append((warm_start(model, tokenizer, examples, steps=60, lr=1e-2, batch=8, seed=0), model))
    (losses, model), (losses_again, _) = runs
    assert losses == losses_again and len(losses) == 60
    assert np.mean(losses[-5:]) < 0.25 * np.mean(losses[:5])
    assert not model.training
    prompt = tokenizer.encode("speaker: target green circle. message:")
    tokens, _ = sample_tokens(model, prompt, 4, 0.0, tokenizer.eos_token_id)
    assert tokenizer.decode(tokens, skip_special_tokens=True) == " green" and tokens[-1] == tokenizer.eos_token_id
