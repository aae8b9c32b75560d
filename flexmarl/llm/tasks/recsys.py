"""Multi-scenario recommendation sessions as a text task (workload 2): each scenario of the MovieLens-1M
simulator (`envs/recsys`) is an agent that decodes an item's semantic ID as text.

Items get semantic IDs (hierarchical k-means of their embeddings, `flexmarl.semantic_ids`; 3 levels of 8
clusters plus a token telling apart the items of a leaf), written as one vocabulary token per level:
`<a3><b5><c1><d17>` (`vocabulary_tokens()` lists them all, so the builder can keep each one token).

Query: a user, the scenario the session starts in and a session seed, drawn from the task's rng.
Trajectory: one session of at most `session_steps` steps in the simulator (its user model, scenario
moves, departures and unified reward mapping, unchanged). At each step the scenario the user is in calls
its agent with a prompt naming the scenario (so one shared model knows which scenario it serves, as
OxygenREC's scenario instruction) and the user's last `history_items` logged likes as codes; the agent
decodes a code. The scenario shows the candidate (of its own candidate list: a genre channel still shows
its genre) whose code shares the longest prefix with the decoded one (the decoded item itself when it
is a candidate; the first such candidate on ties), and the simulated user responds.

Rewards: a step's reward is the acting scenario's mapped reward of the user's response (its
`reward_weights` over click, watch, diversity, like). A completion that does not start with a
well-formed code (levels in order), or a code naming no item, is a format error: the agent's step reward
is `format_penalty` instead, it is counted in `format_errors`, and the scenario shows its first candidate
so the session goes on. An agent's reward is its session return: the sum of its step rewards over the
steps it acted in (0 for a scenario the user never visited; such an agent made no calls, so it adds no
samples). Success is the session's click rate (clicked steps / steps).

The G trajectories of a query replay the same session seed, so they share the user's random draws
(candidate noise, click draws, scenario moves) and differ by what the agents recommend: the group
advantage compares recommendations, not luck. Warm start: next liked item given the previous likes
(MovieLens-1M training ratings >= 4), as the generative recommender's pretraining; a genre channel's
examples are the likes within its genre.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np

from envs.recsys.scenarios import DEFAULT_SCENARIOS, GenreChannel, build_scenario
from flexmarl.llm.tasks.base import Call, Outcome, TextTask
from flexmarl.semantic_ids import SemanticIds, build_semantic_ids

LEVEL_LETTERS = "abcdefghij"
"""Code position i is written `<{LEVEL_LETTERS[i]}{value}>`."""
CODE_TOKEN = re.compile(r"<([a-j])(0|[1-9][0-9]*)>")
MIN_RATING_LIKED = 4.0
"""A logged rating at least this high is a like (warm-start targets and prompt history)."""


def code_text(code) -> str:
    """An item code as text, one `<letter value>` token per position."""
    return "".join(f"<{LEVEL_LETTERS[i]}{int(v)}>" for i, v in enumerate(code))


def parse_code(text: str, length: int) -> tuple[int, ...] | None:
    """The code a completion starts with (leading whitespace skipped, anything after the code ignored:
    the engine may stop on max_new_tokens), or None unless `length` tokens follow in level order."""
    values, pos = [], len(text) - len(text.lstrip())
    for level in range(length):
        match = CODE_TOKEN.match(text, pos)
        if match is None or match.group(1) != LEVEL_LETTERS[level]:
            return None
        values.append(int(match.group(2)))
        pos = match.end()
    return tuple(values)


def nearest_slot(code, candidate_codes: np.ndarray) -> int:
    """The candidate whose code shares the longest prefix with `code` (the first one on ties)."""
    same = np.cumprod(candidate_codes == np.asarray(code)[None], axis=1)
    return int(np.argmax(same.sum(1)))


@dataclass
class RecsysWorld:
    """What every session of a task configuration shares (built once per process, then cached)."""

    ids: SemanticIds
    """Items' semantic IDs."""
    liked: list[np.ndarray]
    """Per user, logged likes in time order (training ratings >= 4)."""
    item_genres: np.ndarray
    """[I, G] bool, for the genre channels' warm-start examples."""
    num_users: int
    """Users of the simulator."""


_WORLDS: dict[str, RecsysWorld] = {}


class RecsysSessions(TextTask):
    name = "recsys_sessions"

    def __init__(self, format_penalty: float = -1.0, scenarios=DEFAULT_SCENARIOS, session_steps: int = 4,
                 move_prob: float = 0.2, history_items: int = 4, levels: int = 3, branching: int = 8,
                 code_seed: int = 0, rank: int = 16):
        """scenarios: the simulator's scenario specs (envs/recsys/scenarios.py), one agent each;
        session_steps: steps per session at most (the user may leave earlier); move_prob: chance the
        user moves to another scenario after a step; history_items: logged likes in a prompt;
        levels/branching/code_seed: the semantic IDs (k-means levels, clusters per level, seed);
        rank: the user model's embedding rank."""
        super().__init__(format_penalty)
        if session_steps < 1 or history_items < 0:
            raise ValueError(f"session_steps >= 1 and history_items >= 0, got {session_steps}, {history_items}")
        if not 1 <= levels < len(LEVEL_LETTERS):
            raise ValueError(f"levels must be in [1, {len(LEVEL_LETTERS) - 1}], got {levels}")
        self.scenario_specs = list(scenarios)
        self.agents = tuple(build_scenario(spec).name for spec in self.scenario_specs)
        self.session_steps, self.move_prob, self.history_items = int(session_steps), float(move_prob), int(history_items)
        self.levels, self.branching, self.code_seed, self.rank = int(levels), int(branching), int(code_seed), int(rank)

    # -- the simulator and the codes (loaded on first use: constructing a task stays cheap) ---------
    def new_env(self):
        """A one-session simulator of this task's scenarios."""
        from envs.recsys.env import MultiScenarioRecEnv

        return MultiScenarioRecEnv(num_envs=1, scenarios=self.scenario_specs, session_length=self.session_steps,
                                   move_prob=self.move_prob, rank=self.rank)

    @property
    def world(self) -> RecsysWorld:
        key = json.dumps([self.scenario_specs, self.rank, self.levels, self.branching, self.code_seed], sort_keys=True)
        if key not in _WORLDS:
            env = self.new_env()
            data = env.data
            _WORLDS[key] = RecsysWorld(
                ids=build_semantic_ids(env.item_factors, self.levels, self.branching, self.code_seed),
                liked=[items[ratings >= MIN_RATING_LIKED] for items, ratings in zip(data.train, data.train_ratings)],
                item_genres=data.genres, num_users=data.num_users)
        return _WORLDS[key]

    # -- prompts --------------------------------------------------------------------------------
    def prompt(self, agent: str, history: np.ndarray) -> str:
        """The scenario instruction and the liked items (oldest first) as codes."""
        codes = self.world.ids.codes
        liked = " ".join(code_text(codes[item]) for item in history) if len(history) else "none"
        return f"{agent} scenario. user liked {liked}. recommend:"

    def user_history(self, user: int) -> np.ndarray:
        """The user's last `history_items` logged likes."""
        liked = self.world.liked[user]
        return liked[max(0, len(liked) - self.history_items):] if self.history_items else liked[:0]

    # -- the contract ---------------------------------------------------------------------------
    def sample_query(self, rng: np.random.Generator) -> dict:
        return {"user": int(rng.integers(self.world.num_users)),
                "scenario": self.agents[int(rng.integers(len(self.agents)))],
                "session_seed": int(rng.integers(2**31 - 1))}

    async def run(self, query: dict, call: Call) -> Outcome:
        ids = self.world.ids
        env = self.new_env()
        env.reset(query["session_seed"], users=[query["user"]], scenarios=[self.agents.index(query["scenario"])])
        prompt_history = self.user_history(query["user"])
        returns = {agent: 0.0 for agent in self.agents}
        errors = {agent: 0 for agent in self.agents}
        clicks = steps = 0
        for _ in range(self.session_steps):
            s = int(env.scenario[0])
            agent = self.agents[s]
            completion = await call(agent, self.prompt(agent, prompt_history))
            code = None if completion.error is not None else parse_code(completion.text, ids.length)
            item = None if code is None else ids.item(code)
            candidates = env.candidates[0, : env.scenarios[s].num_candidates]
            slot = 0 if item is None else nearest_slot(code, ids.codes[candidates])
            actions = np.zeros((1, env.S), int)
            actions[0, s] = slot
            step = env.step(actions)
            if item is None:
                errors[agent] += 1
                returns[agent] += self.format_penalty
            else:
                returns[agent] += float(step.rewards[0, s])
            clicks += int(env.last_signals["click"][0] > 0)
            steps += 1
            if step.done[0]:
                break
        return Outcome(rewards=returns, format_errors=errors, success=clicks / steps)

    def sft_examples(self, rng: np.random.Generator, n: int) -> dict[str, list[tuple[str, str]]]:
        """Per scenario, n (prompt, next liked item's code) pairs from the logs: a user and a position in
        their likes drawn uniformly over all likes (of the channel's genre for a genre channel)."""
        world = self.world
        users = np.concatenate([np.full(len(items), u) for u, items in enumerate(world.liked)])
        positions = np.concatenate([np.arange(len(items)) for items in world.liked])
        targets = np.concatenate(world.liked)
        examples: dict[str, list[tuple[str, str]]] = {}
        for spec, agent in zip(self.scenario_specs, self.agents):
            scenario = build_scenario(spec)
            pool = np.arange(len(targets))
            if isinstance(scenario, GenreChannel):
                from envs.recsys.data import GENRES

                pool = pool[world.item_genres[targets, GENRES.index(scenario.genre)]]
            picked = pool[rng.integers(len(pool), size=n)]
            examples[agent] = []
            for i in picked:
                liked = world.liked[users[i]]
                history = liked[max(0, positions[i] - self.history_items):positions[i]] if self.history_items else liked[:0]
                examples[agent].append((self.prompt(agent, history), code_text(world.ids.codes[targets[i]])))
        return examples

    def corpus(self) -> list[str]:
        """Prompt templates of every scenario on logged examples, and every code token."""
        examples = self.sft_examples(np.random.default_rng(12345), 200)
        lines = [prompt + completion for pairs in examples.values() for prompt, completion in pairs]
        return lines + [" ".join(self.vocabulary_tokens())]

    def vocabulary_tokens(self) -> list[str]:
        codes = self.world.ids.codes
        return [f"<{LEVEL_LETTERS[level]}{v}>" for level in range(codes.shape[1])
                for v in range(int(codes[:, level].max()) + 1)]
