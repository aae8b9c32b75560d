import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from flexmarl.llm.build import build_task_models, read_build
from flexmarl.llm.models import load_causal_lm, load_tokenizer, sample_tokens


def test_the_fixture_builds_one_loadable_checkpoint_per_agent(tiny_task_models):
    assert sorted(tiny_task_models) == ["listener", "speaker"]
    for agent, path in tiny_task_models.items():
        assert path.name == agent and (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()
        model = load_causal_lm(path)
        assert model.config.hidden_size == 128 and model.config.num_hidden_layers == 2
        assert all(p.dtype == torch.float32 for p in model.parameters())
    # One tokenizer for the task: every agent's directory holds the same one.
    speaker, listener = (json.loads((tiny_task_models[a] / "tokenizer.json").read_text()) for a in ("speaker", "listener"))
    assert speaker == listener
    assert load_tokenizer(tiny_task_models["speaker"]).eos_token_id is not None


def test_build_json_records_settings_losses_and_the_success_rate(tiny_task_models):
    record = read_build(tiny_task_models["speaker"].parent)
    settings = record["settings"]
    assert settings["task"] == "speaker_listener" and settings["seed"] == 0
    for agent in ("speaker", "listener"):
        losses = record["agents"][agent]["warm_start_losses"]
        assert len(losses) == settings["warm_start_steps"]
        assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    evaluation = record["evaluation"]
    assert evaluation["queries"] == settings["eval_queries"]
    assert record["warm_start_success"] == evaluation["success"] and 0.0 <= evaluation["success"] <= 1.0
    # Even the short warm start teaches the listener to answer with a letter.
    assert evaluation["format_error_rate"]["listener"] <= 0.25
    (speaker_turn, listener_turn), *_ = evaluation["transcripts"]
    assert speaker_turn["agent"] == "speaker" and listener_turn["agent"] == "listener"


MINI = dict(warm_start_steps=3, sft_examples=32, eval_queries=2, hidden=32, layers=1, heads=2, head_dim=16,
            max_positions=64)


def weights(paths: dict) -> dict:
    return {a: load_file(p / "model.safetensors") for a, p in paths.items()}


def same_weights(a: dict, b: dict) -> bool:
    return all(torch.equal(a[agent][k], b[agent][k]) for agent in a for k in a[agent])


def test_a_matching_build_is_reused_a_changed_one_rebuilt_and_builds_are_deterministic(tmp_path):
    first = build_task_models("speaker_listener", tmp_path / "a", **MINI)
    stamps = {a: (p / "model.safetensors").stat().st_mtime_ns for a, p in first.items()}
    assert build_task_models("speaker_listener", tmp_path / "a", **MINI) == first
    assert stamps == {a: (p / "model.safetensors").stat().st_mtime_ns for a, p in first.items()}

    twin = build_task_models("speaker_listener", tmp_path / "b", **MINI)
    assert same_weights(weights(first), weights(twin))
    a, b = read_build(tmp_path / "a"), read_build(tmp_path / "b")
    assert a["agents"] == b["agents"] and a["evaluation"] == b["evaluation"]

    build_task_models("speaker_listener", tmp_path / "a", **{**MINI, "warm_start_steps": 4})
    assert read_build(tmp_path / "a")["settings"]["warm_start_steps"] == 4
    assert not same_weights(weights(first), weights(twin))

    # A build whose record is missing (interrupted) is redone; other task kwargs are other settings.
    twin_stamps = {a: (p / "model.safetensors").stat().st_mtime_ns for a, p in twin.items()}
    (tmp_path / "b" / "build.json").unlink()
    build_task_models("speaker_listener", tmp_path / "b", **MINI)
    assert twin_stamps != {a: (p / "model.safetensors").stat().st_mtime_ns for a, p in twin.items()}
    build_task_models("speaker_listener", tmp_path / "b", task_kwargs={"both_fraction": 0.5}, **MINI)
    assert read_build(tmp_path / "b")["settings"]["task_kwargs"] == {"both_fraction": 0.5}


VLLM_GREEDY = r"""
import json, os, sys
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
from vllm import LLM, SamplingParams
llm = LLM(model=sys.argv[1], dtype="float32", enforce_eager=True, max_model_len=256, seed=0,
          kv_cache_memory_bytes=2**28)
out = llm.generate([sys.argv[2]], SamplingParams(temperature=0.0, max_tokens=8, logprobs=0))[0]
done = out.outputs[0]
print(json.dumps({"prompt_ids": list(out.prompt_token_ids), "tokens": list(done.token_ids), "text": done.text,
                  "logprobs": [lp[t].logprob for lp, t in zip(done.logprobs, done.token_ids)]}))
"""


@pytest.mark.slow
def test_vllm_loads_a_built_directory_and_agrees_with_transformers(tiny_task_models):
    """vLLM reads the directory alone (its own tokenizer on a text prompt): same prompt ids, same greedy
    completion, same logprobs as the transformers model."""
    path = tiny_task_models["listener"]
    prompt = "listener: A red circle, B blue star, C red star, D green square. message: blue"
    done = subprocess.run([sys.executable, "-c", VLLM_GREEDY, str(path), prompt], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    tokenizer, model = load_tokenizer(path), load_causal_lm(path)
    assert got["prompt_ids"] == tokenizer.encode(prompt)
    tokens, logprobs = sample_tokens(model, got["prompt_ids"], 8, 0.0, tokenizer.eos_token_id)
    assert got["tokens"] == tokens and np.allclose(got["logprobs"], logprobs, atol=1e-3)
    assert got["text"] == tokenizer.decode(tokens, skip_special_tokens=True)
