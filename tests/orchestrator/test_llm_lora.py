"""LoRA agents through the orchestrator (serial, HF engines, tiny task models): adapter agents over one
base share one engine pool and train (adapters only pushed, versions advance), microbatch equals sync,
full-model and adapter groups mix, and bad adapter configs are one error line before anything starts."""

from pathlib import Path

import pytest
import torch

from flexmarl.llm.workload import logprob_agreement
from orchestrator.cli import main
from orchestrator.core import make_orchestrator
from orchestrator.runtime import SerialRuntime
from tests.flexmarl.llm.conftest import tiny_task_models  # noqa: F401  (shared session fixture)
from tests.orchestrator.test_llm import _close, assert_setup_error, llm_config, trainer_weights

LORA = {"adapter": "lora", "rank": 4, "alpha": 16.0}


def lora_config(models, adapters=("speaker", "listener"), **sections):
    """Each agent in `adapters` a LoRA adapter over the build's shared base (warm-started on both agents'
    examples: `llm.base_model` left empty); the others full models."""
    chosen = {agent: dict(LORA) if agent in adapters else str(path) for agent, path in models.items()}
    llm = {"models": chosen, "model_dir": str(models["speaker"].parent), **sections.pop("llm", {})}
    return llm_config({}, llm=llm, **sections)


def test_two_adapter_agents_on_one_base_share_one_engine_pool_and_train(tiny_task_models):
    orch = make_orchestrator(lora_config(tiny_task_models), SerialRuntime())
    assert list(orch.workload.engines) == ["lora"]  # one pool for both agents
    start = trainer_weights(orch)
    assert all(all("lora_" in name for name in w) for w in start.values())  # a push is the adapter alone
    metrics = [orch.step() for _ in range(2)]
    engine = orch.workload.engines["lora"][0]
    assert {g: engine.version(g) for g in ("speaker", "listener")} == {"speaker": 2, "listener": 2}
    trained = trainer_weights(orch)
    for group in ("speaker", "listener"):
        assert not _close({group: start[group]}, {group: trained[group]}, atol=1e-6)
        assert all(m[f"losses/{group}/grad_norm"] > 0 and m[f"llm/{group}/tokens_trained"] > 0 for m in metrics)
    assert metrics[-1]["llm/load/lora"] == metrics[-1]["llm/calls/speaker"] + metrics[-1]["llm/calls/listener"]
    assert logprob_agreement(orch.workload, samples=4) < 1e-3  # the engines serve exactly the trained adapters


def test_microbatch_equals_sync_with_adapter_agents(tiny_task_models):
    runs = {}
    for mode in ("sync", "microbatch"):
        orch = make_orchestrator(lora_config(tiny_task_models, pipeline={"mode": mode}), SerialRuntime())
        metrics = [orch.step() for _ in range(2)]
        runs[mode] = (trainer_weights(orch), metrics)
    assert _close(runs["sync"][0], runs["microbatch"][0], atol=1e-6)
    assert all(m["perf/policy_lag_max"] == 0 for m in runs["microbatch"][1])
    start = make_orchestrator(lora_config(tiny_task_models), SerialRuntime())
    assert not _close(trainer_weights(start), runs["sync"][0], atol=1e-6)  # the adapters did train


def test_full_model_and_adapter_groups_mix_in_one_run_on_one_trainer_slot(tiny_task_models):
    cfg = lora_config(tiny_task_models, adapters=("listener",), resources={"trainer_slots": 1})
    orch = make_orchestrator(cfg, SerialRuntime())
    assert sorted(orch.workload.engines) == ["lora", "speaker"]
    metrics = orch.step()
    weights = trainer_weights(orch)
    assert "model.embed_tokens.weight" in weights["speaker"] and all("lora_" in n for n in weights["listener"])
    assert orch.workload.engines["lora"][0].version("listener") == 1 and orch.workload.engines["speaker"][0].version() == 1
    assert metrics["perf/trainer_swaps"] > 0
    assert logprob_agreement(orch.workload, samples=4) < 1e-3


@pytest.mark.parametrize("overrides, fragments", [
    (["llm.models={speaker: {adapter: lora, rank: 1000}, listener: {adapter: lora}}", "llm.base_model=SPEAKER"],
     ["config key 'llm.models.speaker.rank': got 1000", "at most 128", "is 128 x 128"]),
    (["llm.models={speaker: {adapter: lora, target_modules: [c_attn]}, listener: {adapter: lora}}"],
     ["config key 'llm.models.speaker.target_modules'", "no 'c_attn'", "q_proj"]),
    (["llm.models={speaker: {adapter: lora, base: /elsewhere}, listener: {adapter: lora}}", "llm.base_model=SPEAKER"],
     ["config key 'llm.models.speaker.base': got '/elsewhere'", "the engines' base SPEAKER (llm.base_model)"]),
    (["llm.models={speaker: {adapter: lora}, listener: {adapter: lora}}", "llm.base_model=/no/such/base"],
     ["config key 'llm.base_model': got '/no/such/base'", "is not a directory"]),
    (["llm.models={speaker: {adapter: lora, alpha: -1}}"], ["config key 'llm.models.speaker.alpha': got -1", "a number > 0 or 'auto'"]),
    (["llm.models={speaker: {adapter: lora, rnk: 4}}"],
     ["config key 'llm.models.speaker.rnk'", "known keys under 'llm.models.speaker': adapter, rank, alpha"]),
])
def test_bad_adapter_configs_are_config_errors_before_ray_or_a_run_directory(tiny_task_models, tmp_path, capsys,
                                                                              overrides, fragments):
    model_dir = f"llm.model_dir={tiny_task_models['speaker'].parent}"
    assert_setup_error(tmp_path, capsys, [model_dir, *overrides], fragments, {"SPEAKER": str(tiny_task_models["speaker"])})


@pytest.fixture(scope="module")
def exported(tiny_task_models, tmp_path_factory):
    """A run with the listener as an adapter, trained one iteration and exported: (checkpoint, export dir)."""
    from orchestrator.train import train

    tmp = tmp_path_factory.mktemp("exported")
    train(lora_config(tiny_task_models, adapters=("listener",), run={"iterations": 1}), tmp / "run")
    checkpoint = tmp / "run" / "checkpoints" / "iter_000001"
    assert main(["llm", "export", str(checkpoint), str(tmp / "out")]) == 0
    return checkpoint, tmp / "out"


def test_export_writes_adapter_groups_as_peft_adapters_with_the_trained_logprobs(tiny_task_models, exported):
    from peft import PeftModel

    from flexmarl.config.adapters import LoraAdapter
    from flexmarl.llm.lora import AdapterHost
    from flexmarl.llm.models import load_causal_lm
    from flexmarl.llm.trainer import completion_logprobs, pack_tokens
    from orchestrator.run_dir import load_checkpoint

    checkpoint, export = exported
    base = str(tiny_task_models["speaker"].parent / "shared-base")
    out = export / "listener"
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                     "flexmarl_export.json"]
    assert (export / "speaker" / "model.safetensors").exists()  # the full-model group as before
    exported_model = PeftModel.from_pretrained(load_causal_lm(base), str(out)).eval()  # PEFT over the base
    host = AdapterHost(base)  # the checkpoint's adapter as its trainer held it
    host.add("listener", LoraAdapter(adapter="lora", **{k: v for k, v in LORA.items() if k != "adapter"}))
    host.load_weights("listener", load_checkpoint(checkpoint)["state"]["trainers"]["listener"]["adapter"])
    batch = pack_tokens([[5, 6, 7, 8], [9, 10]], [[11, 12, 13], [14, 15]], "cpu")
    with torch.no_grad():
        logp = completion_logprobs(exported_model, batch)
        assert torch.equal(logp, completion_logprobs(host.activate("listener"), batch))
        assert not torch.allclose(logp, completion_logprobs(load_causal_lm(base), batch), atol=1e-5)  # trained


def _init_config(models, init: str, **adapter):
    chosen = {"speaker": str(models["speaker"]), "listener": {"adapter": "lora", "init": init, **adapter}}
    return {"models": chosen, "model_dir": str(models["speaker"].parent)}


def test_an_adapter_starts_from_an_exported_one_engines_included_and_its_kl_reference_is_that_start(
        tiny_task_models, exported):
    from flexmarl.llm.trainer import completion_logprobs, pack_tokens
    from orchestrator.run_dir import load_checkpoint

    checkpoint, export = exported
    cfg = llm_config({}, llm={**_init_config(tiny_task_models, str(export / "listener")), "kl_coef": 0.5})
    orch = make_orchestrator(cfg, SerialRuntime())
    adapter = next(g.adapter for g in orch.workload.groups if g.name == "listener")
    assert (adapter.rank, adapter.scale_alpha) == (LORA["rank"], LORA["alpha"])  # the folder's, not the defaults
    saved = load_checkpoint(checkpoint)["state"]["trainers"]["listener"]["adapter"]
    start = trainer_weights(orch)["listener"]
    assert sorted(start) == sorted(saved) and all(torch.equal(start[n], saved[n]) for n in saved)
    assert logprob_agreement(orch.workload, samples=4) < 1e-3  # pushed to the engines before the first call
    trainer = orch.trainers["listener"]
    batch = pack_tokens([[5, 6, 7, 8], [9, 10]], [[11, 12, 13], [14, 15]], "cpu")
    with torch.no_grad():
        policy = completion_logprobs(trainer._policy(), batch)
        assert torch.equal(trainer._reference_logprobs(batch), policy)  # KL to where it started, not the base
    metrics = orch.step()
    assert metrics["losses/listener/grad_norm"] > 0 and trainer._policy().active_adapter == "listener"


def test_a_node_that_cannot_read_an_adapters_init_folder_is_a_config_error_naming_node_and_key(
        tiny_task_models, exported, tmp_path):
    import shutil

    from flexmarl.config import ConfigError
    from flexmarl.llm.setup import check_nodes_read_models

    init = shutil.copytree(exported[1] / "listener", tmp_path / "init")
    cfg = llm_config({}, llm=_init_config(tiny_task_models, str(init)))
    orch = make_orchestrator(cfg, SerialRuntime())
    (init / "adapter_model.safetensors").unlink()  # as a node without the shared folder's weights sees it
    workload = orch.workload
    with pytest.raises(ConfigError) as info:
        check_nodes_read_models(cfg, orch.runtime, workload.groups, workload.actors())
    text = str(info.value)
    assert "llm.models.listener.init" in text and str(init) in text and "a PEFT LoRA adapter folder" in text
    assert "on node this process, which hosts the trainer" in text and "adapter_model.safetensors" in text


def _write_adapter(folder: Path, config: dict, tensors: dict) -> Path:
    import json

    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 16,
                                                            "target_modules": ["q_proj"], **config}))
    save_file({n: np.zeros(shape, np.float32) for n, shape in tensors.items()}, str(folder / "adapter_model.safetensors"))
    return folder


@pytest.mark.parametrize("case, fragments", [
    ("missing", ["config key 'llm.models.listener.init'", "adapter_config.json", "cannot read"]),
    ("not_lora", ["config key 'llm.models.listener.init'", "is not a LoRA adapter's (peft_type 'IA3')"]),
    ("dora", ["config key 'llm.models.listener.init'", "use_dora = True; supported: False"]),
    ("rank", ["config key 'llm.models.listener.rank': got 8", "4 as the adapter in", "or leave rank out"]),
    ("truncated", ["config key 'llm.models.listener.init'", "a truncated or corrupt file"]),
    ("other_base", ["config key 'llm.models.listener.init'", "do not fit a rank-4 adapter of",
                    "has shape [4, 64], the model needs [4, 128]"]),
])
def test_a_corrupt_or_mismatched_adapter_to_start_from_is_a_config_error_before_start(
        tiny_task_models, exported, tmp_path, capsys, case, fragments):
    _, export = exported
    layer = "base_model.model.model.layers.0.self_attn.q_proj"
    good = {f"{layer}.lora_A.weight": (4, 128), f"{layer}.lora_B.weight": (128, 4)}
    folder, extra = tmp_path / "adapter", []
    if case == "missing":
        folder = tmp_path / "nowhere"
    elif case == "not_lora":
        _write_adapter(folder, {"peft_type": "IA3"}, good)
    elif case == "dora":
        _write_adapter(folder, {"use_dora": True}, good)
    elif case == "rank":
        folder, extra = export / "listener", ["rank: 8"]
    elif case == "truncated":
        weights = _write_adapter(folder, {}, good) / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-10])
    else:  # an adapter of a narrower base
        _write_adapter(folder, {}, {f"{layer}.lora_A.weight": (4, 64), f"{layer}.lora_B.weight": (64, 4)})
    source = "{adapter: lora, init: " + str(folder) + "".join(", " + e for e in extra) + "}"
    overrides = [f"llm.models={{speaker: SPEAKER, listener: {source}}}"]
    assert_setup_error(tmp_path, capsys, [f"llm.model_dir={tiny_task_models['speaker'].parent}", *overrides],
                       fragments, {"SPEAKER": str(tiny_task_models["speaker"])})


def test_resume_restores_adapters_and_their_optimizer_states_bit_exactly(tiny_task_models, tmp_path):
    """A LoRA run stopped after iteration 2 and resumed ends iteration 3 with exactly the adapters and Adam
    states of the run that was never stopped (both agents adapters, one trainer slot: the swapped-out
    state is what the checkpoint holds)."""
    from orchestrator.run_dir import load_checkpoint
    from orchestrator.train import train

    def run(iterations, run_dir, resume=False):
        cfg = lora_config(tiny_task_models, run={"iterations": iterations}, resources={"trainer_slots": 1})
        train(cfg, run_dir, resume=resume)
        return load_checkpoint(run_dir / "checkpoints" / f"iter_{iterations:06d}")["state"]["trainers"]

    full = run(3, tmp_path / "full")
    cut = run(2, tmp_path / "cut")
    resumed = run(3, tmp_path / "cut", resume=True)
    for group in ("speaker", "listener"):
        a, b = full[group], resumed[group]
        assert a["version"] == b["version"] == 3 and a["adapter"].keys() == b["adapter"].keys()
        assert all(torch.equal(a["adapter"][n], b["adapter"][n]) for n in a["adapter"])
        moments = [(sa, sb) for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values())]
        assert moments and all(torch.equal(sa[k], sb[k]) for sa, sb in moments for k in ("exp_avg", "exp_avg_sq", "step"))
        assert not all(torch.equal(a["adapter"][n], cut[group]["adapter"][n]) for n in a["adapter"])  # it trained on


def test_a_replaced_adapter_engine_serves_every_adapters_current_version(tiny_task_models):
    """The shared pool's engine dies after a push: its replacement is loaded with each adapter's current
    version (both agents' trained adapters, not the base), and a request re-sent to it delivers its rows once."""
    from flexmarl.llm.workflow import EngineDiedError

    orch = make_orchestrator(lora_config(tiny_task_models, pipeline={"mode": "sync"}), SerialRuntime())
    orch.step()  # both adapters trained and pushed as version 1
    fleet, dead = orch.workload.fleet, orch.workload.engines["lora"][0]
    fleet.repair(EngineDiedError("lora", 0, 0, "killed"))
    replacement = orch.workload.engines["lora"][0]
    assert replacement is not dead and fleet.restarts == 1
    assert {g: replacement.version(g) for g in ("speaker", "listener")} == {"speaker": 1, "listener": 1}
    assert logprob_agreement(orch.workload, samples=4) < 1e-3  # the trained adapters, not fresh ones
    results = orch.collect(orch.dispatch())
    assert sorted(r.request_id for r in results) == [f"it000001-req{r:04d}" for r in range(4)]
    assert all(len(orch.store.ready_rows(g, policy_version=1)) == 4 for g in ("speaker", "listener"))
