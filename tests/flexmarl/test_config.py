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


def test_dotted_override_merges_into_a_mapping():
    cfg = load_config(ROOT / "configs/demo.yaml", ["env.kwargs.N=4"])
    assert cfg.env.kwargs == {"N": 4, "max_cycles": 25}


@pytest.mark.parametrize("value, expected", [("{}", {}), ("{N: 5}", {"N": 5})])
def test_mapping_override_replaces_the_mapping(value, expected):
    cfg = load_config(ROOT / "configs/demo.yaml", [f"env.kwargs={value}"])
    assert cfg.env.kwargs == expected


def test_a_changed_env_name_drops_the_base_kwargs():
    cfg = load_config(ROOT / "configs/demo.yaml", ["env.name=tests.user_envs:match_game"])
    assert cfg.env.name == "tests.user_envs:match_game" and cfg.env.kwargs == {}
    same = load_config(ROOT / "configs/demo.yaml", ["env.name=mpe/simple_spread"])
    assert same.env.kwargs == {"N": 3, "max_cycles": 25}


def test_a_changed_env_name_keeps_kwargs_given_beside_it():
    cfg = load_config(ROOT / "configs/demo.yaml", ["env.name=tests.user_envs:match_game", "env.kwargs.episode_length=3"])
    assert cfg.env.kwargs == {"episode_length": 3}


@pytest.mark.parametrize("item, path", [("algo", "algo"), ("algo.lr_actor.x=1", "algo.lr_actor.x"), ("=3", "=3")])
def test_malformed_overrides_name_the_key(item, path):
    with pytest.raises(ConfigError) as info:
        load_config(ROOT / "configs/demo.yaml", [item])
    assert info.value.path == path
