"""Evaluation episodes, greedy unless asked to sample (one env, all agents of a group in one batched call per
step)."""

from __future__ import annotations

import numpy as np
import torch

from envs import EnvSpec, split_observation
from envs.batched import is_batched
from flexmarl.groups import GroupLayout
from flexmarl.rollout.backend import InferenceBackend
from flexmarl.rollout.batched import evaluate_batched
from flexmarl.rollout.checks import check_observation, check_reward
from flexmarl.rollout.env_io import critic_input, group_critic_rows, team_step_reward, win_flag


def evaluate_policy(env, spec: EnvSpec, groups: list[GroupLayout], backend: InferenceBackend, use_state: bool,
                    global_state: str, episodes: int, seed: int, sample: bool = False) -> dict:
    """Greedy episodes (`sample`: actions drawn from the policy, from a generator seeded by `seed`): `eval/*`
    means, and each episode's value under `episodes/return`, `episodes/length` (env steps) and `episodes/win`
    (where the env reports wins) for per-episode statistics (rliable, marl-eval)."""
    if is_batched(env):  # a batched env plays one episode per copy: build it with num_envs=episodes
        return evaluate_batched(env, groups, backend, use_state, global_state, seed, sample=sample)
    returns, lengths, wins = [], [], []
    generator = torch.Generator().manual_seed(seed)
    for episode in range(episodes):
        raw, _ = env.reset(seed=seed + episode)
        h = {g.name: backend.initial_state(g.name, len(g.agents)) for g in groups}
        start = np.ones(1, np.float32)
        total, won, step = 0.0, None, 0
        while raw:
            flat = {a: split_observation(o, spec.per_agent[a]) for a, o in raw.items()}
            for agent, (vec, _) in flat.items():
                check_observation(vec, spec.per_agent[agent].obs_dim, agent, step, 0, f"eval-{episode}")
            state = critic_input(env, spec, {a: v for a, (v, _) in flat.items()}, use_state, global_state)
            actions = {}
            for g in groups:
                alive = [a for a in g.agents if a in flat]
                if not alive:
                    continue
                obs = np.stack([flat[a][0] if a in flat else np.zeros(g.obs_dim, np.float32) for a in g.agents])
                masks = None
                if g.has_action_mask:
                    masks = np.stack([flat[a][1] if a in flat else np.ones(g.action.dim, bool) for a in g.agents])
                critic_in = group_critic_rows(g, state, obs)
                out = backend.act(g.name, obs, critic_in, masks, *h[g.name], np.repeat(start, len(g.agents)),
                                  deterministic=not sample, generator=generator)
                h[g.name] = (out.h_actor, out.h_critic)
                for j, agent in enumerate(g.agents):
                    if agent in flat:
                        action = out.actions[j]
                        if g.action.kind == "box":
                            action = np.clip(action, g.action.low, g.action.high).reshape(g.action.shape)
                        actions[agent] = action
            start = np.zeros(1, np.float32)
            raw, rewards, terms, truncs, infos = env.step(actions)
            total += team_step_reward([check_reward(r, a, step, 0, f"eval-{episode}") for a, r in rewards.items()],
                                      spec.shared_reward)
            flag = win_flag(infos)
            won = won if flag is None else flag
            raw = {a: o for a, o in raw.items() if not (terms.get(a) or truncs.get(a))}
            step += 1
        returns.append(total)
        lengths.append(step)
        if won is not None:
            wins.append(float(won))
    out = {"eval/return_mean": float(np.mean(returns)), "eval/return_std": float(np.std(returns)),
           "episodes/return": [float(r) for r in returns], "episodes/length": lengths}
    if wins:
        out["eval/win_rate"] = float(np.mean(wins))
        out["episodes/win"] = [float(w) for w in wins]
    return out
