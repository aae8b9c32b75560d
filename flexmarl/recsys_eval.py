"""Evaluation of recommendation policies: simulated sessions and offline metrics on held-out ratings.

- `simulate`: every env copy plays one user session (greedy policies); team reward per session and each
  scenario's share.
- `offline_metrics`: for each held-out MovieLens-1M rating (a user's last rated items, never used to fit
  the user model), the scenario ranks the held-out item among `negatives` sampled items the user never
  rated, in a fresh session; hit rate@k and NDCG@k per scenario (sampled-negatives protocol).

Policies are scoring functions `scores(obs [B, D], scenario, users [B], candidates [B, K]) -> [B, K]`
(higher is better; observation-based policies ignore the ids, generative ones score the candidates' codes);
`trained_policy` builds one from a checkpoint's contents, `popularity_scores` (most popular) and `random_scores` are baselines.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from envs import describe_env
from flexmarl.config import config_from_saved
from flexmarl.groups import build_groups
from flexmarl.models import GroupPolicy

Scores = Callable[..., np.ndarray]


def popularity_scores(env) -> Scores:
    """Most-popular baseline: score each candidate by its training popularity."""
    def scores(obs: np.ndarray, scenario: int, *_) -> np.ndarray:
        items = obs[:, env.r + env.S + 3:].reshape(len(obs), env.K, env.r + 2)
        return items[..., env.r]

    return scores


def random_scores(env, seed: int = 0) -> Scores:
    """Uniform random baseline."""
    rng = np.random.default_rng(seed)
    return lambda obs, scenario, *_: rng.random((len(obs), env.K))


def trained_policy(config: dict, trainer_states: dict, env) -> Scores:
    """Actor logits of trained groups (a checkpoint's config and `state["trainers"]`), per scenario."""
    cfg = config_from_saved(config)
    groups = build_groups(cfg, describe_env(env))
    actors = {}
    for g in groups:
        policy = GroupPolicy.for_group(g, cfg.model)
        policy.load_state_dict(trainer_states[g.name]["policy"])
        for agent in g.agents:
            actors[env.possible_agents.index(agent)] = policy.actor.eval()

    @torch.no_grad()
    def scores(obs: np.ndarray, scenario: int, *_) -> np.ndarray:
        actor = actors[scenario]
        dist, _ = actor.distribution(torch.as_tensor(obs)[None], actor.trunk.initial_state(len(obs)),
                                     torch.ones(1, len(obs)))
        return dist.logits[0].numpy()

    return scores


def simulate(env, scores: Scores, seed: int) -> dict:
    """One session per env copy (`env.num_envs` sessions), greedy on `scores` within each mask."""
    E, S = env.num_envs, env.S
    team, per_scenario = np.zeros(E), np.zeros((E, S))
    finished = np.zeros(E, bool)
    ob = env.reset(seed=seed)
    while not finished.all():
        actions = np.zeros((E, S), int)
        for s in range(S):
            acting = ob.alive[:, s]
            if acting.any():
                value = scores(ob.obs[acting, s], s, env.user[acting], env.candidates[acting])
                value = np.where(ob.action_mask[acting, s], value, -np.inf)
                actions[acting, s] = value.argmax(-1)
        st = env.step(actions)
        running = ~finished
        team[running] += env.team_reward(st.rewards)[running]
        per_scenario[running] += st.rewards[running]
        finished |= st.done
        ob = st.next
    return {"team_reward_mean": float(team.mean()), "team_reward_std": float(team.std()),
            "scenario_reward": {name: float(per_scenario[:, s].mean()) for s, name in enumerate(env.possible_agents)}}


def offline_metrics(env, scores: Scores, users: int = 1000, negatives: int = 19, k: int = 10, seed: int = 0) -> dict:
    """Hit rate@k and NDCG@k per scenario: the held-out item ranked among `negatives` unrated items."""
    rng = np.random.default_rng(seed)
    data = env.data
    chosen = rng.choice(data.num_users, size=min(users, data.num_users), replace=False)
    rated = [set(data.train[u]) | set(data.test[u]) for u in chosen]
    candidates = np.zeros((len(chosen), negatives + 1), int)
    for row, u in enumerate(chosen):
        candidates[row, 0] = data.test[u][0]
        unrated = np.setdiff1d(np.arange(data.num_items), list(rated[row]), assume_unique=True)
        candidates[row, 1:] = rng.choice(unrated, size=negatives, replace=False)
    order = rng.permuted(np.tile(np.arange(negatives + 1), (len(chosen), 1)), axis=1)  # hide the position
    candidates = np.take_along_axis(candidates, order, 1)
    target = np.argmax(order == 0, axis=1)
    out = {}
    for s, name in enumerate(env.possible_agents):
        obs = env.agent_observation(chosen, np.full(len(chosen), s), candidates, np.zeros_like(candidates))
        score = scores(obs, s, chosen, candidates)[:, : negatives + 1]
        rank = (score > score[np.arange(len(chosen)), target][:, None]).sum(1)
        hit = rank < k
        out[name] = {f"hit_rate_at_{k}": float(hit.mean()),
                     f"ndcg_at_{k}": float(np.where(hit, 1.0 / np.log2(rank + 2), 0.0).mean())}
    return out
