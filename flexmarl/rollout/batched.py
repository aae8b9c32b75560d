"""Sampling and greedy evaluation on a `BatchedEnv` (all env copies stepped by one call).

Rows come out exactly as from the per-copy sampler (columns env-major, `e * k + j` for agent j of a
k-agent group), so trainers cannot tell the two apart. Differences that follow from the batched contract:
every agent is present every step; an agent that is dead acts with the env's mask and its rows are
inactive (left out of the loss, still part of the GAE recursion, as MAPPO's active masks); copies that end
are reset by the env inside the step.
"""

from __future__ import annotations

import numpy as np
import torch

from envs.batched import BatchedEnv, BatchedObs
from flexmarl.groups import GroupLayout
from flexmarl.rollout.checks import EnvOutputError, EnvStepError
from flexmarl.rollout.env_io import with_agent_id


def group_columns(env: BatchedEnv, group: GroupLayout) -> np.ndarray:
    """Positions of a group's agents along the env's agent axis."""
    return np.array([env.possible_agents.index(a) for a in group.agents])


def check_batched_obs(ob: BatchedObs, num_envs: int, agents, obs_dim: int, step: int, request: str) -> None:
    if ob.obs.shape[:2] != (num_envs, len(agents)) or ob.obs.shape[2] != obs_dim:
        raise EnvOutputError(f"request {request} step {step}: observations have shape {ob.obs.shape}, "
                             f"expected {(num_envs, len(agents), obs_dim)}")
    bad = ~np.isfinite(ob.obs).all(axis=2)
    if bad.any():
        e, j = map(int, np.argwhere(bad)[0])
        raise EnvOutputError(f"agent {agents[j]!r} at step {step} (env copy {e}, request {request}): "
                             "observation contains NaN or inf")


def check_batched_rewards(rewards: np.ndarray, agents, step: int, request: str) -> None:
    bad = ~np.isfinite(rewards)
    if bad.any():
        e, j = map(int, np.argwhere(bad)[0])
        raise EnvOutputError(f"agent {agents[j]!r} at step {step} (env copy {e}, request {request}): "
                             f"reward is {rewards[e, j]}")


class GroupInputs:
    """A group's current-step policy inputs, cut from the batched arrays."""

    def __init__(self, env: BatchedEnv, group: GroupLayout, use_state: bool, global_state: str):
        self.group, self.cols, self.k = group, group_columns(env, group), len(group.agents)
        self.use_state, self.global_state = use_state, global_state

    def load(self, ob: BatchedObs) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(obs [C, D], critic input [C, S], action mask [C, A], alive [C]) with C = E * k."""
        E = ob.obs.shape[0]
        obs = ob.obs[:, self.cols].reshape(E * self.k, -1)
        if not self.use_state:
            critic = obs
        elif self.global_state == "concat_obs":
            critic = np.repeat(ob.obs.reshape(E, -1), self.k, axis=0)
        else:
            critic = np.repeat(ob.state, self.k, axis=0)
        critic = with_agent_id(critic, self.group)
        mask = ob.action_mask[:, self.cols].reshape(E * self.k, -1)
        alive = ob.alive[:, self.cols].reshape(-1)
        return obs, critic, mask, alive


def sample_batched(sampler) -> None:
    """Fill a `Sampler`'s buffers from its worker's batched env (the batched env driver)."""
    w, req, T, E = sampler.w, sampler.req, sampler.T, sampler.E
    env: BatchedEnv = w.batched_env
    inputs = {g.name: GroupInputs(env, g, w.use_state, w.cfg.env.global_state) for g in w.groups}
    obs_dim = w.spec.per_agent[env.possible_agents[0]].obs_dim
    agent_returns = np.zeros((E, len(env.possible_agents)))  # each copy's running return per agent
    episode_returns, episode_lengths = np.zeros(E), np.zeros(E, dtype=int)

    def load(ob: BatchedObs, step: int) -> None:
        check_batched_obs(ob, E, env.possible_agents, obs_dim, step, req.request_id)
        for g in w.groups:
            buf = sampler.buffers[g.name]
            buf["cur_obs"], buf["cur_critic"], mask, alive = inputs[g.name].load(ob)
            buf["cur_active"] = alive.astype(np.float32)
            if g.has_action_mask:
                buf["cur_mask"] = mask

    try:
        ob = env.reset(seed=int(sampler.env_seeds.integers(2**31 - 1)))
    except Exception as exc:
        raise EnvStepError(f"batched env raised in reset (request {req.request_id}): {exc!r}") from exc
    load(ob, 0)
    for t in range(T):
        actions = np.zeros((E, len(env.possible_agents)), np.int64)
        for g in w.groups:
            buf = sampler.buffers[g.name]
            out = w.backend.act(g.name, buf["cur_obs"], buf["cur_critic"], buf["cur_mask"], buf["h_actor"],
                                buf["h_critic"], buf["cur_start"], deterministic=False, generator=sampler.generator)
            sampler.record(g, t, out)
            actions[:, inputs[g.name].cols] = out.actions.reshape(E, -1)
        try:
            st = env.step(actions)
        except Exception as exc:
            raise EnvStepError(f"batched env raised at step {t} (request {req.request_id}): {exc!r}") from exc
        check_batched_rewards(st.rewards, env.possible_agents, t, req.request_id)
        episode_returns += env.team_reward(st.rewards)
        agent_returns += st.rewards
        episode_lengths += 1
        truncated = np.zeros(E, bool) if st.truncated is None else st.truncated & st.done
        for g in w.groups:
            buf, gi = sampler.buffers[g.name], inputs[g.name]
            ended = np.repeat(st.done, gi.k).astype(np.float32)
            buf["rewards"][t] = st.rewards[:, gi.cols].reshape(-1)
            buf["episode_end"][t] = ended
            buf["terminated"][t] = np.repeat(st.done & ~truncated, gi.k)
            buf["cur_start"] = ended.copy()
            if truncated.any():  # time-limit cuts bootstrap from the final observation, as per-copy truncations
                cols = np.flatnonzero(np.repeat(truncated, gi.k))
                critic = gi.load(st.final)[1][cols]
                buf["truncation_values"][t, cols] = w.backend.value(g.name, critic, buf["h_critic"][cols],
                                                                    np.zeros(len(cols), np.float32))
        for e in np.flatnonzero(st.done):
            sampler.result.episode_returns.append(float(episode_returns[e]))
            sampler.result.episode_lengths.append(int(episode_lengths[e]))
            for i, agent in enumerate(env.possible_agents):
                sampler.result.agent_returns.setdefault(agent, []).append(float(agent_returns[e, i]))
            agent_returns[e] = 0.0
            if env.reports_win:
                sampler.result.wins.append(float(st.won[e]))
            episode_returns[e], episode_lengths[e] = 0.0, 0
        load(st.next, t + 1)
    sampler.t_used = T
    sampler.result.env_steps = T * E


def evaluate_batched(env: BatchedEnv, groups: list[GroupLayout], backend, use_state: bool, global_state: str,
                     seed: int, max_steps: int = 10_000, sample: bool = False) -> dict:
    """Greedy (or, with `sample`, sampled) evaluation: every copy plays exactly one episode (taking the first
    N finished episodes of more copies would favour short episodes)."""
    E = env.num_envs
    inputs = {g.name: GroupInputs(env, g, use_state, global_state) for g in groups}
    state = {g.name: backend.initial_state(g.name, E * len(g.agents)) for g in groups}
    starts = {g.name: np.ones(E * len(g.agents), np.float32) for g in groups}
    returns, wins, lengths = np.zeros(E), np.zeros(E), np.zeros(E, np.int64)
    finished = np.zeros(E, bool)
    generator = torch.Generator().manual_seed(seed)
    ob = env.reset(seed=seed)
    for _ in range(max_steps):
        actions = np.zeros((E, len(env.possible_agents)), np.int64)
        for g in groups:
            obs, critic, mask, _ = inputs[g.name].load(ob)
            out = backend.act(g.name, obs, critic, mask if g.has_action_mask else None, *state[g.name],
                              starts[g.name], deterministic=not sample, generator=generator)
            state[g.name] = (out.h_actor, out.h_critic)
            starts[g.name] = np.zeros_like(starts[g.name])
            actions[:, inputs[g.name].cols] = out.actions.reshape(E, -1)
        st = env.step(actions)
        running = ~finished
        returns[running] += env.team_reward(st.rewards)[running]
        lengths[running] += 1
        newly = st.done & running
        wins[newly] = st.won[newly]
        finished |= st.done
        ob = st.next
        if finished.all():
            break
    out = {"eval/return_mean": float(returns.mean()), "eval/return_std": float(returns.std()),
           "eval/episodes": float(finished.sum()), "episodes/return": returns[finished].tolist(),
           "episodes/length": lengths[finished].tolist()}
    if env.reports_win:
        out["eval/win_rate"] = float(wins[finished].mean()) if finished.any() else 0.0
        out["episodes/win"] = wins[finished].tolist()
    return out
