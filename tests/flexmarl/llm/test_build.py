import json

import torch

from flexmarl.llm.build import build_task_models, read_build
from flexmarl.llm.models import load_causal_lm, load_tokenizer


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
