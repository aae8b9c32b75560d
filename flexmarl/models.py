"""Torch policies: MLP (optionally + GRU) actor with action masking, a candidate-scoring actor for slates,
and a critic.

Shapes are time-major: x [T, B, D], episode_start [T, B], recurrent state h [B, H]. A rollout step is the
T = 1 case of the training call, so both paths share one forward.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical, Independent, Normal

from envs import ActionSpec
from envs.spec import ImageSpec
from flexmarl.config import ModelConfig
from flexmarl.image_encoder import ImageEncoder

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def _init(layer: nn.Linear, gain: float) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, gain=gain)
    nn.init.zeros_(layer.bias)
    return layer


class Trunk(nn.Module):
    """Input LayerNorm (or a CNN for images) -> MLP (optionally a LayerNorm after each hidden layer) ->
    optional GRU (hidden state reset at episode starts)."""

    def __init__(self, in_dim: int, cfg: ModelConfig, image: ImageSpec | None = None):
        super().__init__()
        act = _ACTIVATIONS[cfg.activation]
        gain = nn.init.calculate_gain(cfg.activation)
        self.encoder = ImageEncoder(image) if image is not None else None
        if self.encoder is not None:
            layers: list[nn.Module] = [nn.LayerNorm(self.encoder.out_dim)] if cfg.input_layer_norm else []
            width = self.encoder.out_dim
        else:
            layers = [nn.LayerNorm(in_dim)] if cfg.input_layer_norm else []
            width = in_dim
        for hidden in cfg.hidden_sizes:
            layers += [_init(nn.Linear(width, hidden), gain), act()]
            if cfg.hidden_layer_norm:
                layers.append(nn.LayerNorm(hidden))
            width = hidden
        self.mlp = nn.Sequential(*layers)
        self.gru = nn.GRU(width, cfg.gru_hidden) if cfg.use_gru else None
        self.hidden_dim = cfg.gru_hidden if cfg.use_gru else 0
        self.out_dim = cfg.gru_hidden if cfg.use_gru else width

    def initial_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, self.hidden_dim)

    def forward(self, x: torch.Tensor, h: torch.Tensor, episode_start: torch.Tensor):
        if self.encoder is not None:  # [T, B, D] -> CNN on T * B images -> [T, B, F]
            x = self.encoder(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        features = self.mlp(x)
        if self.gru is None:
            return features, h
        outputs = []
        for t in range(features.shape[0]):
            h = h * (1.0 - episode_start[t]).unsqueeze(-1)
            out, h_next = self.gru(features[t : t + 1], h.unsqueeze(0))
            h = h_next.squeeze(0)
            outputs.append(out)
        return torch.cat(outputs, dim=0), h


class MultiCategorical:
    """Independent categoricals, one per MultiDiscrete component, over slices of one logit vector."""

    def __init__(self, logits: torch.Tensor, nvec: tuple[int, ...]):
        self.parts = [Categorical(logits=part, validate_args=False) for part in logits.split(list(nvec), dim=-1)]

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        return sum(d.log_prob(actions[..., i]) for i, d in enumerate(self.parts))

    def entropy(self) -> torch.Tensor:
        return sum(d.entropy() for d in self.parts)


def _multinomial(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row of probs [..., n], from `generator` (requests are reproducible from their seed)."""
    return torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).reshape(probs.shape[:-1])


class Actor(nn.Module):
    def __init__(self, obs_dim: int, action: ActionSpec, cfg: ModelConfig, image: ImageSpec | None = None):
        super().__init__()
        self.action = action
        self.trunk = Trunk(obs_dim, cfg, image)
        self.head = _init(nn.Linear(self.trunk.out_dim, action.dim), gain=0.01)
        if action.kind == "box":
            self.log_std = nn.Parameter(torch.zeros(action.dim))

    def head_output(self, obs: torch.Tensor, h: torch.Tensor, episode_start: torch.Tensor):
        """(logits or means [T, B, action.dim], next recurrent state)."""
        features, h = self.trunk(obs, h, episode_start)
        return self.head(features), h

    def distribution(self, obs, h, episode_start, action_mask=None):
        out, h = self.head_output(obs, h, episode_start)
        if self.action.kind == "discrete":
            if action_mask is not None:
                out = out.masked_fill(~action_mask, -1e9)
            return Categorical(logits=out, validate_args=False), h
        if self.action.kind == "multi_discrete":  # a mask has one flag per choice of each component
            if action_mask is not None:
                out = out.masked_fill(~action_mask, -1e9)
            return MultiCategorical(out, self.action.nvec), h
        return Independent(Normal(out, self.log_std.exp().expand_as(out), validate_args=False), 1, validate_args=False), h

    def greedy(self, dist) -> torch.Tensor:
        if self.action.kind == "discrete":
            return dist.probs.argmax(-1)
        if self.action.kind == "multi_discrete":
            return torch.stack([d.probs.argmax(-1) for d in dist.parts], dim=-1)
        return dist.mean

    def sample(self, dist, generator: torch.Generator | None) -> torch.Tensor:
        """A seeded draw from `dist` (the rollout's actions)."""
        if self.action.kind == "discrete":
            return _multinomial(dist.probs, generator)
        if self.action.kind == "multi_discrete":
            return torch.stack([_multinomial(d.probs, generator) for d in dist.parts], dim=-1)
        return dist.mean + dist.stddev * torch.randn(dist.mean.shape, generator=generator)


class CandidateScorer(Actor):
    """Discrete actor over a candidate slate: obs = [context | K candidate blocks of `candidate_dim`].

    One network scores every slot from the context features c and the candidate's features i:
    logit_k = MLP([c, i_k, c * i_k]) (the product term lets it express user-item affinity directly), so
    a candidate gets the same score in any slot and what is learnt about an item transfers across slots
    and scenarios."""

    def __init__(self, obs_dim: int, action: ActionSpec, cfg: ModelConfig, candidate_dim: int):
        nn.Module.__init__(self)
        if action.kind != "discrete":
            raise ValueError("candidate_scorer needs a discrete action (one action per candidate slot)")
        self.action, self.candidate_dim = action, candidate_dim
        self.context_dim = obs_dim - action.n * candidate_dim
        if self.context_dim <= 0:
            raise ValueError(f"candidate_scorer: observation width {obs_dim} leaves no context before "
                             f"{action.n} candidates of width {candidate_dim}")
        act, gain, width = _ACTIVATIONS[cfg.activation], nn.init.calculate_gain(cfg.activation), cfg.hidden_sizes[-1]
        self.trunk = Trunk(self.context_dim, cfg)
        self.context = nn.Sequential(_init(nn.Linear(self.trunk.out_dim, width), gain), act())
        self.candidate = nn.Sequential(nn.LayerNorm(candidate_dim), _init(nn.Linear(candidate_dim, width), gain), act())
        self.score = nn.Sequential(_init(nn.Linear(3 * width, width), gain), act(), _init(nn.Linear(width, 1), 0.01))

    def head_output(self, obs, h, episode_start):
        features, h = self.trunk(obs[..., : self.context_dim], h, episode_start)
        c = self.context(features).unsqueeze(-2)                                     # [T, B, 1, W]
        items = obs[..., self.context_dim :].unflatten(-1, (self.action.n, self.candidate_dim))
        i = self.candidate(items)                                                    # [T, B, K, W]
        return self.score(torch.cat([c.expand_as(i), i, c * i], -1)).squeeze(-1), h


class Critic(nn.Module):
    def __init__(self, in_dim: int, cfg: ModelConfig, image: ImageSpec | None = None):
        super().__init__()
        self.trunk = Trunk(in_dim, cfg, image)
        self.head = _init(nn.Linear(self.trunk.out_dim, 1), gain=1.0)

    def forward(self, x, h, episode_start):
        features, h = self.trunk(x, h, episode_start)
        return self.head(features).squeeze(-1), h


class GroupPolicy(nn.Module):
    """Actor + critic of one agent group (every agent of the group shares them)."""

    def __init__(self, obs_dim: int, critic_dim: int, action: ActionSpec, cfg: ModelConfig, candidate_dim: int = 0,
                 obs_image: ImageSpec | None = None, critic_image: ImageSpec | None = None):
        super().__init__()
        if cfg.actor == "candidate_scorer":
            self.actor: Actor = CandidateScorer(obs_dim, action, cfg, candidate_dim)
        else:
            self.actor = Actor(obs_dim, action, cfg, obs_image)
        self.critic = Critic(critic_dim, cfg, critic_image)

    @classmethod
    def for_group(cls, group, cfg: ModelConfig) -> "GroupPolicy":
        """The policy of a `flexmarl.groups.GroupLayout`."""
        return cls(group.obs_dim, group.critic_dim, group.action, cfg, group.candidate_dim, group.obs_image,
                   group.critic_image)


def to_numpy_state(module: nn.Module) -> dict[str, np.ndarray]:
    """Weights as numpy arrays: Ray moves them zero-copy through the object store."""
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def load_numpy_state(module: nn.Module, state: dict[str, np.ndarray]) -> None:
    module.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in state.items()})
