"""Scenarios: the plug-in unit of the recommendation env. Each scenario is one agent.

A scenario declares where its candidates come from and how its business signals map onto the shared
reward scale. Users plug their own in without editing the project:

    env:
      name: recsys/movielens
      kwargs:
        scenarios:
          - home_feed                                   # built-in, by name
          - {type: genre_channel, genre: Comedy}        # built-in with arguments
          - {type: my_pkg.scenarios:PriceDrops, num_candidates: 10, reward_weights: {click: 2.0}}

`type` is a built-in name, a `module:Class` import path, or a name a package registers in the
`flexmarl.scenarios` entry-point group (`[project.entry-points."flexmarl.scenarios"]`, e.g.
`price_drops = "my_pkg.scenarios:PriceDrops"`). A plug-in subclasses `Scenario` and implements
`candidates`; `signals` may add business signals (each declared in `signal_ranges`, checked every step:
a value outside its range fails naming the scenario).
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass

import numpy as np

from envs.recsys.data import GENRES

BASE_SIGNALS = {"click": (0.0, 1.0), "watch": (0.0, 1.0), "diversity": (0.0, 1.0), "like": (0.0, 1.0)}
"""Signals every scenario gets from the user model: click, duration-aware watch fraction of the
recommended item (0 without a click), diversity (the item's genres are new in the session), like
(a click on an item the user would rate >= 4)."""


@dataclass
class UserContext:
    """What a scenario may look at for a batch of users (B = users in this scenario this step)."""

    user_factors: np.ndarray
    """[B, r] the users' taste embeddings."""
    seen: np.ndarray
    """[B, I] bool: items already shown in the session."""
    last_clicked: np.ndarray
    """[B] item index of the last click in the session, -1 if none."""
    item_factors: np.ndarray
    """[I, r] catalog embeddings."""
    item_genres: np.ndarray
    """[I, G] bool."""
    popularity: np.ndarray
    """[I] in [0, 1]."""


class ScenarioError(ValueError):
    """A scenario plug-in returned something malformed; the message names the scenario."""


class Scenario:
    name: str = "scenario"
    num_candidates: int = 20
    reward_weights: dict[str, float] = {"click": 1.0, "watch": 1.0, "diversity": 0.2, "like": 0.5}
    signal_ranges: dict[str, tuple[float, float]] = {}
    """Extra business signals this scenario reports, with their (low, high) range."""

    def __init__(self, num_candidates: int | None = None, reward_weights: dict | None = None, name: str | None = None):
        if num_candidates is not None:
            self.num_candidates = int(num_candidates)
        self.reward_weights = {**type(self).reward_weights, **(reward_weights or {})}
        self.name = name or self.name
        unknown = set(self.reward_weights) - set(BASE_SIGNALS) - set(self.signal_ranges)
        if unknown:
            raise ScenarioError(f"scenario {self.name!r}: reward weights for undeclared signals {sorted(unknown)}; "
                                f"signals: {sorted({**BASE_SIGNALS, **self.signal_ranges})}")

    def candidates(self, ctx: UserContext, rng: np.random.Generator) -> np.ndarray:
        """[B, num_candidates] item indices for the users in this scenario."""
        raise NotImplementedError

    def signals(self, ctx: UserContext, items: np.ndarray, clicked: np.ndarray) -> dict[str, np.ndarray]:
        """Extra business signals per user ([B] each), declared in `signal_ranges`."""
        return {}


def _top_unseen(scores: np.ndarray, seen: np.ndarray, k: int) -> np.ndarray:
    scores = np.where(seen, -np.inf, scores)
    return np.argpartition(-scores, k, axis=1)[:, :k]


class HomeFeed(Scenario):
    """Personalised feed: half from the user's nearest items, half from the popular head, unseen only."""

    name = "home_feed"

    def candidates(self, ctx, rng):
        k = self.num_candidates
        personal = _top_unseen(ctx.user_factors @ ctx.item_factors.T, ctx.seen, k // 2)
        noise = rng.gumbel(size=(len(ctx.seen), len(ctx.popularity))) * 0.3
        popular = _top_unseen(np.log(ctx.popularity + 1e-3)[None] + noise, ctx.seen, k - k // 2)
        return np.concatenate([personal, popular], axis=1)


class GenreChannel(Scenario):
    """A genre channel: candidates drawn among the genre's items, weighted by popularity."""

    name = "genre_channel"
    reward_weights = {"click": 1.0, "watch": 1.5, "diversity": 0.0, "like": 0.5}

    def __init__(self, genre: str = "Comedy", **kwargs):
        if genre not in GENRES:
            raise ScenarioError(f"scenario genre_channel: unknown genre {genre!r}; genres: {', '.join(GENRES)}")
        self.genre = genre
        super().__init__(name=kwargs.pop("name", f"genre_{genre.lower().replace(' ', '_')}"), **kwargs)

    def candidates(self, ctx, rng):
        in_genre = ctx.item_genres[:, GENRES.index(self.genre)]
        scores = np.where(in_genre, np.log(ctx.popularity + 1e-3), -np.inf)[None]
        return _top_unseen(scores + rng.gumbel(size=ctx.seen.shape), ctx.seen, self.num_candidates)


class MoreLikeThis(Scenario):
    """Item-detail rail: the nearest items to the last clicked one (the user's taste before any click)."""

    name = "more_like_this"
    reward_weights = {"click": 1.0, "watch": 1.0, "diversity": 0.0, "like": 1.0}

    def candidates(self, ctx, rng):
        anchor = np.where(ctx.last_clicked[:, None] >= 0, ctx.item_factors[np.maximum(ctx.last_clicked, 0)],
                          ctx.user_factors)
        return _top_unseen(anchor @ ctx.item_factors.T, ctx.seen, self.num_candidates)


BUILTIN_SCENARIOS: dict[str, type[Scenario]] = {
    "home_feed": HomeFeed, "genre_channel": GenreChannel, "more_like_this": MoreLikeThis,
}
DEFAULT_SCENARIOS = ("home_feed", {"type": "genre_channel", "genre": "Comedy"}, "more_like_this")


def build_scenario(spec) -> Scenario:
    """A scenario from a built-in name, a `module:Class` path, or a dict {type: ..., **kwargs}."""
    kwargs = {}
    if isinstance(spec, dict):
        kwargs = {k: v for k, v in spec.items() if k != "type"}
        spec = spec.get("type")
    if isinstance(spec, Scenario):
        return spec
    if not isinstance(spec, str):
        raise ScenarioError(f"scenario spec {spec!r}: a built-in name, 'module:Class', or {{type: ..., ...}}")
    if spec in BUILTIN_SCENARIOS:
        return _instantiate(spec, BUILTIN_SCENARIOS[spec], kwargs)
    plugins = _entry_point_scenarios()
    if spec in plugins:
        return _instantiate(spec, plugins[spec].load(), kwargs)
    if ":" in spec:
        module, _, attr = spec.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ScenarioError(f"scenario {spec!r}: cannot import it: {exc}") from exc
        return _instantiate(spec, cls, kwargs)
    installed = f"; installed plug-ins: {', '.join(sorted(plugins))}" if plugins else ""
    raise ScenarioError(f"unknown scenario {spec!r}; built-in: {', '.join(BUILTIN_SCENARIOS)}{installed}; "
                        "or 'module:Class'")


ENTRY_POINT_GROUP = "flexmarl.scenarios"
"""Packages register scenarios under this entry-point group (name = the spec users write in configs)."""


def _entry_point_scenarios() -> dict:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def scenario_options(cls) -> list[str]:
    """Keyword options a scenario class accepts: its __init__'s and, where it forwards **kwargs, its bases'."""
    names: list[str] = []
    for klass in getattr(cls, "__mro__", ())[:-1]:  # object's __init__ takes nothing
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())[1:]
        names += [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def _instantiate(spec: str, cls, kwargs: dict) -> Scenario:
    if isinstance(cls, type):
        allowed = scenario_options(cls)
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            raise ScenarioError(f"scenario {spec!r}: unknown option {unknown[0]!r}; its options: "
                                f"{', '.join(allowed) or 'none'}")
    scenario = cls(**kwargs)
    if not isinstance(scenario, Scenario):
        raise ScenarioError(f"scenario {spec!r}: {cls!r} does not build an envs.recsys.Scenario")
    return scenario
