from pathlib import Path

import pytest

from flexmarl.config import ConfigError, config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.run.batch_env_steps % cfg.microbatch_env_steps == 0


def test_overrides_are_typed_and_nested():
    cfg = load_config(ROOT / "configs/demo.yaml", ["algo.lr_actor=1e-3", "env.kwargs.N=4", "run.mode=serial"])
    assert cfg.algo.lr_actor == 1e-3 and cfg.env.kwargs["N"] == 4 and cfg.run.mode == "serial"


@pytest.mark.parametrize(
    "data, path, fragment",
    [
        ({"algo": {"lrr": 1}}, "algo.lrr", "known keys under 'algo'"),
        ({"algo": {"epochs": "five"}}, "algo.epochs", "an integer"),
        ({"algo": {"name": "qmix"}}, "algo.name", "'mappo', 'ippo'"),
        ({"algo": {"gamma": 1.5}}, "algo.gamma", "[0, 1]"),
        ({"algo": {"policy_loss": "nope"}}, "algo.policy_loss", "ppo_clip"),
        ({"run": {"batch_env_steps": 1000}}, "run.batch_env_steps", "multiple of"),
        ({"run": {"mode": "mpi"}}, "run.mode", "'ray', 'serial'"),
        ({"rollout": {"num_workers": 0}}, "rollout.num_workers", "> 0"),
        ({"env": {"groups": "some"}}, "env.groups", "'shared', 'independent'"),
        ({"env": {"groups": {"a": []}}}, "env.groups.a", "non-empty list"),
        ({"model": {"hidden_sizes": [64, -1]}}, "model.hidden_sizes", "positive integers"),
        ({"algo": {"num_minibatches": 3}, "run": {"batch_env_steps": 1600}}, "algo.num_minibatches", "divisor"),
        ({"run": 5}, "run", "a mapping"),
    ],
)
def test_invalid_config_names_key_value_and_allowed(data, path, fragment):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert info.value.path == path
    assert fragment in str(info.value)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key.path=value"):
        config_from_dict({}, ["algo.lr_actor"])


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="existing YAML"):
        load_config(tmp_path / "nope.yaml")
