"""The env driver for PettingZoo-style env copies: each copy is reset and stepped on its own, agents may
come and go within an episode (inactive columns are masked), a copy that raises mid-episode is rebuilt
and its unfinished episode dropped, and a request may play whole episodes (`rollout.request_unit`)."""

from __future__ import annotations

import numpy as np

from envs import make_env, split_observation
from flexmarl.groups import GroupLayout
from flexmarl.rollout.backend import ActOutput
from flexmarl.rollout.checks import EnvStepError, check_observation, check_reward
from flexmarl.rollout.env_io import critic_input, group_critic_rows, team_step_reward, win_flag


def sample_per_copy(sampler) -> None:
    """Fill a `Sampler`'s buffers from its worker's env copies (the per-copy env driver)."""
    PerCopyEnvs(sampler).run()


class PerCopyEnvs:
    """Fills a `Sampler`'s buffers by stepping its worker's env copies one by one."""

    def __init__(self, sampler):
        s = self.s = sampler
        self.w, self.req, self.T, self.E = s.w, s.req, s.T, s.E
        self.buffers, self.result, self.generator, self.env_seeds = s.buffers, s.result, s.generator, s.env_seeds
        self.episode_returns = np.zeros(self.E)
        self.agent_returns: list[dict[str, float]] = [{} for _ in range(self.E)]
        self.episode_lengths = np.zeros(self.E, dtype=int)
        self.episode_start_t = np.zeros(self.E, dtype=int)
        self.one_episode = self.w.cfg.rollout.request_unit == "episodes"
        self.finished = np.zeros(self.E, dtype=bool)  # episodes mode: env copies whose episode is over

    # -- env bookkeeping ------------------------------------------------------------------------
    def _critic_rows(self, env, obs_by_agent: dict):
        return critic_input(env, self.w.spec, obs_by_agent, self.w.use_state, self.w.cfg.env.global_state)

    def _load_obs(self, e: int, raw_obs: dict, step: int) -> dict:
        """Write env e's observations into each group's current-step arrays; returns flat obs by agent."""
        flat = {}
        for agent, obs in raw_obs.items():
            spec = self.w.spec.per_agent.get(agent)
            if spec is None:
                raise EnvStepError(f"env copy {e} at step {step}: observation for unknown agent {agent!r}")
            vec, mask = split_observation(obs, spec)
            check_observation(vec, spec.obs_dim, agent, step, e, self.req.request_id)
            flat[agent] = (vec, mask)
        for g in self.w.groups:
            buf, k = self.buffers[g.name], len(g.agents)
            for j, agent in enumerate(g.agents):
                col = e * k + j
                if agent in flat:
                    buf["cur_obs"][col], mask = flat[agent]
                    buf["cur_active"][col] = 1.0
                    if mask is not None:
                        buf["cur_mask"][col] = mask
                else:
                    buf["cur_obs"][col] = 0.0
                    buf["cur_active"][col] = 0.0
        return {a: v for a, (v, _) in flat.items()}

    def _set_critic(self, e: int, state_row) -> None:
        for g in self.w.groups:
            buf, k = self.buffers[g.name], len(g.agents)
            cols = slice(e * k, (e + 1) * k)
            buf["cur_critic"][cols] = group_critic_rows(g, state_row, buf["cur_obs"][cols])

    def _reset(self, e: int, step: int) -> None:
        env = self.w.envs[e]
        try:
            raw_obs, _ = env.reset(seed=int(self.env_seeds.integers(2**31 - 1)))
        except Exception as exc:
            raise EnvStepError(f"env copy {e} raised in reset at step {step} (request {self.req.request_id}): {exc!r}") from exc
        flat = self._load_obs(e, raw_obs, step)
        self._set_critic(e, self._critic_rows(env, flat))
        for g in self.w.groups:
            k = len(g.agents)
            self.buffers[g.name]["cur_start"][e * k : (e + 1) * k] = 1.0
        self.episode_returns[e], self.episode_lengths[e] = 0.0, 0
        self.agent_returns[e] = {}
        self.episode_start_t[e] = step

    def run(self) -> None:
        for e in range(self.E):
            self._reset(e, 0)
        steps_taken = 0
        for t in range(self.T):
            live = np.flatnonzero(~self.finished)
            if live.size == 0:
                break
            env_actions = [dict() for _ in range(self.E)]
            for g in self.w.groups:
                self._act(g, t, env_actions)
            for e in live:
                self._step_env(int(e), t, env_actions[e])
            steps_taken, self.s.t_used = steps_taken + live.size, t + 1
        self.result.env_steps = steps_taken

    def _act(self, g: GroupLayout, t: int, env_actions: list[dict]) -> None:
        buf = self.buffers[g.name]
        live = np.flatnonzero(buf["cur_active"])
        if live.size == 0:
            buf["active"][t] = 0.0
            return
        out = self._act_live(g.name, buf, live)
        self.s.record(g, t, out)
        buf["cur_start"][:] = 0.0
        k = len(g.agents)
        env_action = out.actions
        if g.action.kind == "box":
            env_action = np.clip(env_action, g.action.low, g.action.high).reshape(-1, *g.action.shape)
        for col in live:
            e, j = divmod(int(col), k)
            env_actions[e][g.agents[j]] = env_action[col]

    def _act_live(self, group: str, buf: dict, live: np.ndarray):
        """Policy call on the live columns only (long-tail requests end with few live env copies);
        finished columns keep their recurrent state and get zeros, which the active mask hides."""
        args = [buf["cur_obs"], buf["cur_critic"], buf["cur_mask"], buf["h_actor"], buf["h_critic"], buf["cur_start"]]
        if live.size == len(buf["cur_active"]):
            return self.w.backend.act(group, *args, deterministic=False, generator=self.generator)
        out = self.w.backend.act(group, *[None if a is None else a[live] for a in args],
                                 deterministic=False, generator=self.generator)
        full = {}
        for name, like in (("actions", out.actions), ("logp", out.logp), ("values_norm", out.values_norm), ("values", out.values)):
            full[name] = np.zeros((len(buf["cur_active"]), *like.shape[1:]), like.dtype)
            full[name][live] = like
        h_actor, h_critic = buf["h_actor"].copy(), buf["h_critic"].copy()
        h_actor[live], h_critic[live] = out.h_actor, out.h_critic
        return ActOutput(h_actor=h_actor, h_critic=h_critic, **full)

    def _step_env(self, e: int, t: int, actions: dict) -> None:
        env = self.w.envs[e]
        try:
            raw_obs, rewards, terms, truncs, infos = env.step(actions)
        except Exception as exc:
            if self.result.env_restarts >= self.w.cfg.rollout.max_env_restarts:
                raise EnvStepError(
                    f"env copy {e} raised at step {t} (episode step {self.episode_lengths[e]}, "
                    f"request {self.req.request_id}), agents {sorted(actions)}, after "
                    f"{self.result.env_restarts} env restarts in this request "
                    f"(rollout.max_env_restarts = {self.w.cfg.rollout.max_env_restarts}): {exc!r}"
                ) from exc
            self._restart_env(e, t)
            return
        self.episode_lengths[e] += 1
        step_rewards: list[float] = []
        trunc_rows: dict[str, list[int]] = {}
        for g in self.w.groups:
            buf, k = self.buffers[g.name], len(g.agents)
            for j, agent in enumerate(g.agents):
                col = e * k + j
                if agent not in actions:
                    buf["episode_end"][t, col] = 1.0
                    continue
                reward = check_reward(rewards.get(agent, 0.0), agent, t, e, self.req.request_id)
                buf["rewards"][t, col] = reward
                step_rewards.append(reward)
                self.agent_returns[e][agent] = self.agent_returns[e].get(agent, 0.0) + reward
                term, trunc = bool(terms.get(agent, False)), bool(truncs.get(agent, False))
                if term or trunc:
                    buf["episode_end"][t, col] = 1.0
                    buf["terminated"][t, col] = float(term)
                    if trunc and not term:
                        trunc_rows.setdefault(g.name, []).append(j)
        self.episode_returns[e] += team_step_reward(step_rewards, self.w.spec.shared_reward)
        live_obs = {a: o for a, o in raw_obs.items() if not (terms.get(a, False) or truncs.get(a, False))}
        if trunc_rows:
            self._truncation_values(e, t, raw_obs, trunc_rows)
        if not env.agents or not live_obs:
            self.result.episode_returns.append(float(self.episode_returns[e]))
            self.result.episode_lengths.append(int(self.episode_lengths[e]))
            for agent, value in self.agent_returns[e].items():
                self.result.agent_returns.setdefault(agent, []).append(float(value))
            win = win_flag(infos)
            if win is not None:
                self.result.wins.append(win)
            if self.one_episode:
                self._stop(e)
            else:
                self._reset(e, t + 1)
        else:
            flat = self._load_obs(e, live_obs, t + 1)
            self._set_critic(e, self._critic_rows(env, flat))

    def _restart_env(self, e: int, t: int) -> None:
        """Env copy e raised mid-episode: rebuild it and drop its unfinished episode from the loss."""
        start = self.episode_start_t[e]
        for g in self.w.groups:
            buf, k = self.buffers[g.name], len(g.agents)
            cols = slice(e * k, (e + 1) * k)
            self.result.discarded_steps += int(buf["active"][start : t + 1, cols].sum())
            buf["active"][start : t + 1, cols] = 0.0
            buf["episode_end"][t, cols] = 1.0  # nothing flows across the cut in GAE
        self.result.env_restarts += 1
        try:
            close = getattr(self.w.envs[e], "close", None)
            if close is not None:
                close()
        except Exception:  # a crashed engine may not close cleanly; it is being replaced anyway
            pass
        self.w.envs[e] = make_env(self.w.cfg.env.name, **self.w.cfg.env.kwargs)
        if self.one_episode:
            self._stop(e)
        else:
            self._reset(e, t + 1)

    def _stop(self, e: int) -> None:
        """Episodes mode: env copy e played its episode; its columns stay inactive for the rest."""
        self.finished[e] = True
        for g in self.w.groups:
            k = len(g.agents)
            self.buffers[g.name]["cur_active"][e * k : (e + 1) * k] = 0.0

    def _truncation_values(self, e: int, t: int, raw_obs: dict, trunc_rows: dict) -> None:
        """V(final observation) of agents cut by a time limit: they bootstrap instead of ending at 0."""
        final = {a: split_observation(o, self.w.spec.per_agent[a])[0] for a, o in raw_obs.items()}
        state_row = self._critic_rows(self.w.envs[e], final)
        for g in self.w.groups:
            if g.name not in trunc_rows:
                continue
            buf, k = self.buffers[g.name], len(g.agents)
            cols = [e * k + j for j in trunc_rows[g.name]]
            own_obs = np.stack([final.get(a, np.zeros(g.obs_dim, np.float32)) for a in g.agents])
            critic_in = group_critic_rows(g, state_row, own_obs)[trunc_rows[g.name]]
            values = self.w.backend.value(g.name, critic_in, buf["h_critic"][cols], np.zeros(len(cols), np.float32))
            buf["truncation_values"][t, cols] = values
