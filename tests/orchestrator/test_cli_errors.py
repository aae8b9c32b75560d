"""Errors before anything starts: one `error:` line with the key path, exit code 2, no Ray, no run directory."""

from pathlib import Path

import pytest

from orchestrator.cli import main

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "configs/demo.yaml")


@pytest.mark.parametrize(
    "overrides, fragments",
    [
        (["env.name=no_such_module:make"], ["config key 'env.name'", "cannot import module 'no_such_module'"]),
        (["env.name=mpe/no_such_task"], ["config key 'env.name'", "unknown env 'mpe/no_such_task'", "mpe/simple_spread"]),
        (["env.name=tests.faulty_envs:nothing_here"], ["config key 'env.name'", "has no callable 'nothing_here'"]),
        (["env.kwargs.NN=3"], ["config key 'env.kwargs'", "could not be built", "NN"]),
        (["env.name=tests.user_envs:match_game", "env.kwargs={episode_lenght: 3}"],
         ["config key 'env.kwargs.episode_lenght'", "accepts: obs_kind, action_kind, episode_length"]),
        (["env.name=tests.user_envs:text_obs"], ["config key 'env.name'", "observation space Text", "not supported"]),
        (["env.name=pettingzoo.classic.rps_v2:env"], ["config key 'env.name'", "AEC env", "aec_to_parallel"]),
        (["env.name=pettingzoo.classic.rps_v2:raw_env"], ["config key 'env.name'", "AEC env", "aec_to_parallel"]),
        (["env.name=pettingzoo.classic.tictactoe_v3:env"], ["config key 'env.name'", "AEC env", "act in turn"]),
        (["env.name=wrappers/aec_to_parallel", "env.kwargs.env=pettingzoo.classic.connect_four_v3:env"],
         ["config key 'env.kwargs'", "connect_four_v3:env' cannot run as a ParallelEnv", "act in turn"]),
        (["env.name=pettingzoo.classic.rps_v2:parallel_env", "env.global_state=env"],
         ["config key 'env.global_state'", "'concat_obs' for", "state() raised TypeError"]),
        (["env.name=mpe2.simple_tag_v3:parallel_env"],
         ["config key 'env.groups.shared'", "env.groups='{adversary: [adversary_0, adversary_1, adversary_2], agent: [agent_0]}'"]),
        (["env.name=recsys/movielens", "env.kwargs={scenarios: [home_feed, home_fed]}"],
         ["config key 'env.kwargs'", "unknown scenario 'home_fed'", "home_feed, genre_channel, more_like_this"]),
        (["env.name=recsys/movielens", "env.kwargs={scenarios: [{type: genre_channel, genr: Drama}]}"],
         ["config key 'env.kwargs'", "scenario 'genre_channel': unknown option 'genr'", "genre, num_candidates"]),
        (["env.groups={team: [agent_0]}"], ["config key 'env.groups'", "missing: agent_1, agent_2"]),
    ],
)
def test_env_errors_are_config_errors_before_ray_or_a_run_directory(tmp_path, capsys, overrides, fragments):
    import ray

    ray_was_up = ray.is_initialized()
    assert main(["train", DEMO, f"run.output_dir={tmp_path}", "run.mode=ray", *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in err[0], err[0]
    assert not any(tmp_path.iterdir())
    assert ray.is_initialized() == ray_was_up


def test_a_key_of_an_older_version_names_its_new_place(tmp_path, capsys):
    assert main(["train", DEMO, f"run.output_dir={tmp_path}", "algo.epochs=3"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: config key 'algo.epochs' moved to 'trainer.epochs'"]
    assert not any(tmp_path.iterdir())


def test_a_batch_larger_than_the_machine_is_refused_with_its_size(tmp_path, capsys):
    # cooperative_pong: 2 agents see 280x480x3 frames; a MAPPO critic reads both, so an env step is 2 x 3 frames
    import os

    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    step_bytes = 4 * 2 * 3 * 280 * 480 * 3
    batch = 400 * (memory // (2 * step_bytes * 400) + 1)  # a multiple of demo.yaml's 16 x 25 micro-batch
    assert main(["train", DEMO, f"run.output_dir={tmp_path}", "env.name=pettingzoo.butterfly.cooperative_pong_v6:parallel_env",
                 f"run.batch_env_steps={batch}"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]  # not the env's warnings
    assert len(err) == 1 and err[0].startswith("error: config key 'run.batch_env_steps': one iteration of "), err
    assert "group 'shared': 2 x (403,200 + 806,400)" in err[0] and "algo.name=ippo" in err[0], err
    assert not any(tmp_path.iterdir())


def test_resume_with_a_broken_env_override_fails_before_starting(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(Path(DEMO).read_text())
    assert main(["train", "--resume", str(run_dir), "env.name=no_such_module:make"]) == 2
    assert "config key 'env.name'" in capsys.readouterr().err
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]


@pytest.mark.parametrize("episodes", ["0", "-3"])
def test_eval_refuses_a_non_positive_episode_count(tmp_path, capsys, episodes):
    assert main(["eval", str(tmp_path), "--episodes", episodes]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: flexmarl eval --episodes: got {episodes}; allowed: an integer > 0"]


@pytest.mark.parametrize("mode, overrides, fragments", [
    ("serial", ["resources.per_group={nobody: {trainer: {cpus: 1}}}"],
     ["config key 'resources.per_group.nobody'", "a group of this run: shared"]),
    ("ray", ["resources.trainer.gpus=1"], ["placement (resources.trainer)", "trainer of group 'shared' asks for",
                                           "1 GPU", "no node of this cluster has that much"]),
    ("ray", ["resources.per_group={shared: {trainer: {memory_gib: 100000}}}"],
     ["placement (resources.per_group.shared.trainer)", "1e+05 GiB memory", "no node of this cluster has that much"]),
])
def test_placement_errors_leave_no_run_directory(tmp_path, capsys, mode, overrides, fragments):
    """Found when the orchestrator places its actors (on Ray: against the cluster's nodes), before the run
    directory is created."""
    assert main(["train", DEMO, f"run.output_dir={tmp_path}", f"run.mode={mode}", "run.progress=false",
                 *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in err[0], err[0]
    assert not any(tmp_path.iterdir())


def test_a_resume_with_a_placement_error_leaves_the_run_directory_as_it_was(tmp_path, capsys):
    tiny = ["run.mode=serial", "run.iterations=1", "run.batch_env_steps=200", "rollout.envs_per_worker=8",
            "run.progress=false", "trainer.num_minibatches=1"]
    assert main(["train", DEMO, f"run.output_dir={tmp_path}", *tiny]) == 0
    (run_dir,) = tmp_path.iterdir()
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "run.iterations=2",
                 "resources.per_group={nobody: {trainer: {cpus: 1}}}"]) == 2
    assert "config key 'resources.per_group.nobody'" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_a_ray_job_must_name_an_absolute_output_dir(tmp_path, capsys, monkeypatch):
    """Under `ray job submit` the working directory is Ray's temporary copy of --working-dir (the job
    supervisor marks the entrypoint with RAY_JOB_CONFIG_JSON_ENV_VAR): a relative run.output_dir is refused."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    assert main(["train", DEMO, "run.mode=serial"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: config key 'run.output_dir': got 'runs'; allowed: an absolute path when running as a "
                   "Ray job (ray job submit), on storage that outlives the job (its working directory is Ray's "
                   "temporary copy of --working-dir), e.g. run.output_dir=/shared/runs"]
    assert not any(tmp_path.iterdir())

