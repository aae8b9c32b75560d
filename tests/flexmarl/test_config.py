import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from flexmarl.algorithms import POLICY_LOSSES, register_policy_loss
from flexmarl.config import (Config, ConfigError, MovedKeyError, TrainerConfig, config_from_dict, config_from_saved,
                             load_config)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name != "suites")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.run.batch_env_steps % cfg.microbatch_env_steps == 0


def test_loading_every_shipped_config_imports_no_torch():
    code = ("import sys\nfrom flexmarl.config import load_config\n"
            f"for path in {[str(p) for p in SHIPPED]!r}:\n    load_config(path)\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def _models(model: type[BaseModel]):
    yield model
    for field in model.model_fields.values():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _models(field.annotation)


@pytest.mark.parametrize("model", sorted(set(_models(Config)), key=lambda m: m.__name__), ids=lambda m: m.__name__)
def test_every_config_field_has_a_docstring(model):
    assert [name for name, field in model.model_fields.items() if not field.description] == []


def test_overrides_are_typed_and_nested():
    cfg = load_config(ROOT / "configs/demo.yaml", ["algo.lr_actor=1e-3", "env.kwargs.N=4", "run.mode=serial"])
    assert cfg.algo.lr_actor == 1e-3 and cfg.env.kwargs["N"] == 4 and cfg.run.mode == "serial"


@pytest.mark.parametrize(
    "data, path, fragment",
    [
        ({"algo": {"lrr": 1}}, "algo.lrr", "known keys under 'algo'"),
        ({"trainer": {"epochs": "five"}}, "trainer.epochs", "an integer"),
        ({"algo": {"name": "qmix"}}, "algo.name", "'mappo', 'ippo'"),
        ({"algo": {"gamma": 1.5}}, "algo.gamma", "[0, 1]"),
        ({"algo": {"policy_loss": "nope"}}, "algo.policy_loss", "ppo_clip"),
        ({"run": {"batch_env_steps": 1000}}, "run.batch_env_steps", "multiple of"),
        ({"run": {"mode": "mpi"}}, "run.mode", "'ray', 'serial'"),
        ({"rollout": {"num_workers": 0}}, "rollout.num_workers", "> 0"),
        ({"env": {"groups": "some"}}, "env.groups", "'shared', 'independent'"),
        ({"env": {"groups": {"a": []}}}, "env.groups.a", "non-empty list"),
        ({"model": {"hidden_sizes": [64, -1]}}, "model.hidden_sizes", "positive integers"),
        ({"trainer": {"num_minibatches": 3}, "run": {"batch_env_steps": 1600}}, "trainer.num_minibatches", "divisor"),
        ({"run": 5}, "run", "a mapping"),
    ],
)
def test_invalid_config_names_key_value_and_allowed(data, path, fragment):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert info.value.path == path
    assert fragment in str(info.value)


@pytest.mark.parametrize("data, path, new", [
    ({"algo": {"epochs": 3}}, "algo.epochs", "'trainer.epochs'"),
    ({"algo": {"num_minibatches": 2}}, "algo.num_minibatches", "'trainer.num_minibatches'"),
    ({"llm": {"max_grad_norm": 0.5}}, "llm.max_grad_norm", "'trainer.max_grad_norm'"),
    ({"llm": {"device": "cpu"}}, "llm.device", "'trainer.device' (trainers) and 'llm.engine_device' (inference engines)"),
    ({"algo": {"clip_eps": 0.1, "gamma": 7}}, "algo.clip_eps", "'trainer.clip_eps'"),  # the move explains the rest
])
def test_a_moved_key_names_its_new_place(data, path, new):
    with pytest.raises(MovedKeyError) as info:
        config_from_dict(data)
    assert info.value.path == path and str(info.value) == f"config key '{path}' moved to {new}"


def test_trainer_defaults_follow_the_workload_unless_set():
    marl, llm = config_from_dict({}), config_from_dict({"run": {"workload": "llm"}})
    assert (marl.trainer.epochs, marl.trainer.max_grad_norm) == (5, 10.0)
    assert (llm.trainer.epochs, llm.trainer.max_grad_norm) == (1, 1.0)
    chosen = config_from_dict({"run": {"workload": "llm"}, "trainer": {"max_grad_norm": 10.0}})
    assert (chosen.trainer.epochs, chosen.trainer.max_grad_norm) == (1, 10.0)
    assert config_from_dict(chosen.to_dict()) == chosen


def test_a_resolved_config_from_before_the_trainer_section_reads_unchanged():
    saved = yaml.safe_load((ROOT / "tests/flexmarl/data/resolved_before_trainer_section.yaml").read_text())
    trainers = {  # each workload's own copies of the shared knobs (the other workload's are unused)
        "configs/demo.yaml": {"epochs": 10, "num_minibatches": 4, "device": "auto", "max_grad_norm": 10.0, "clip_eps": 0.2,
                              "tau_pos": 1.0, "tau_neg": 1.05},
        "configs/llm/recsys.yaml": {"epochs": 2, "num_minibatches": 1, "device": "auto", "max_grad_norm": 1.0,
                                    "clip_eps": 0.2, "tau_pos": 1.0, "tau_neg": 1.05},
    }
    for path, data in saved.items():
        cfg = config_from_saved(data).to_dict()
        assert cfg["trainer"] == trainers[path], path
        for section, values in data.items():
            kept = {k: v for k, v in values.items() if k not in TrainerConfig.model_fields}
            assert {k: cfg[section][k] for k in kept} == kept, (path, section)
        with pytest.raises(MovedKeyError):  # a user's config is told where the key went instead
            config_from_dict(data)


def test_a_resolved_config_with_the_loss_temperatures_under_llm_reads_unchanged():
    """Configs saved with a `trainer` section but `llm.tau_pos / tau_neg` (before the losses shared one
    contract) resume with the temperatures they trained with."""
    saved = config_from_dict({"run": {"workload": "llm"}, "trainer": {"tau_pos": 2.0, "tau_neg": 5.0}}).to_dict()
    for knob in ("tau_pos", "tau_neg"):
        saved["llm"][knob] = saved["trainer"].pop(knob)
    cfg = config_from_saved(saved)
    assert (cfg.trainer.tau_pos, cfg.trainer.tau_neg) == (2.0, 5.0)
    with pytest.raises(MovedKeyError, match="'llm.tau_pos' moved to 'trainer.tau_pos'"):
        config_from_dict(saved)


def test_per_group_demands_keep_only_the_keys_given():
    cfg = config_from_dict({"resources": {"per_group": {"shared": {"trainer": {"gpus": 1}}}}})
    assert cfg.to_dict()["resources"]["per_group"] == {"shared": {"trainer": {"gpus": 1.0}}}
    assert config_from_dict(cfg.to_dict()) == cfg


def test_a_registered_name_is_checked_against_the_registry_as_it_is_now():
    with pytest.raises(ConfigError, match=r"algo.policy_loss.*'my_loss'.*one of gbpo, grpo, ppo_clip, sa_gcpo"):
        config_from_dict({"algo": {"policy_loss": "my_loss"}})
    register_policy_loss("my_loss")(POLICY_LOSSES["ppo_clip"])
    try:
        assert config_from_dict({"algo": {"policy_loss": "my_loss"}}).algo.policy_loss == "my_loss"
    finally:
        del POLICY_LOSSES["my_loss"]


def test_yaml_numbers_without_a_dot_are_numbers(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("algo:\n  lr_actor: 1e-3\n")  # YAML 1.1 reads this as the string '1e-3'
    assert load_config(path).algo.lr_actor == 1e-3
    with pytest.raises(ConfigError, match=r"algo.lr_actor.*'fast'.*a number"):
        config_from_dict({"algo": {"lr_actor": "fast"}})


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
