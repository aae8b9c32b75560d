"""A generative multi-scenario recommender: a small transformer decodes item semantic IDs, conditioned on
a scenario instruction token and the user, trained with group sampling and a registered group loss.

One model serves every scenario ("train once, deploy everywhere", OxygenREC's reading). Two stages, as in
OneRec / OxygenREC: supervised pretraining on logged interactions (next item a user rated >= 4, from the
MovieLens-1M training ratings), then reinforcement learning. Per RL iteration: sample requests (user,
scenario), decode G codes per request with the current policy, score each item with the simulator's
expected mapped reward (a code that names no item gets `format_penalty`), normalise rewards within each
group, and take `epochs` steps of the chosen loss (GRPO, SA-GCPO, GBPO) on the frozen samples, plus
`kl_coef` times a KL penalty to the pretrained (reference) policy, as in GRPO. The KL term keeps the
policy a soft ranking (without it the policy collapses onto a few codes and ranks everything else
arbitrarily). In simulated sessions and offline metrics the policy ranks the scenario's candidates by
the log-likelihood of their codes (constrained decoding's ranking).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from flexmarl.algorithms import ADVANTAGE_ESTIMATORS, POLICY_LOSSES
from flexmarl.algorithms.advantages import group_clip
from flexmarl.algorithms.losses import aggregate_token_loss, kl_penalty
from flexmarl.semantic_ids import SemanticIds, build_semantic_ids


@dataclass
class GenerativeConfig:
    loss: str = "grpo"
    """Registered group loss: grpo, sa_gcpo, gbpo."""
    iterations: int = 60
    """Policy updates (each on a fresh batch of requests)."""
    requests: int = 128
    """Requests (user, scenario) per iteration."""
    group_size: int = 8
    """G: codes sampled per request; advantages are normalised within each group."""
    epochs: int = 2
    """Gradient steps on each batch of samples."""
    lr: float = 1e-3
    """Adam learning rate."""
    clip_eps: float = 0.2
    """GRPO ratio clip."""
    tau_pos: float = 1.0
    """SA-GCPO gate temperature for positive advantages."""
    tau_neg: float = 1.05
    """SA-GCPO gate temperature for negative advantages (> tau_pos damps negatives harder)."""
    format_penalty: float = -1.0
    """Reward of a code that maps to no item."""
    kl_coef: float = 0.3
    """Weight of the per-token KL penalty to the reference (pretrained) policy (GRPO's beta; DeepSeekMath
    uses 0.04, which here let every loss drift from the pretrained ranking, see docs/recsys.md)."""
    pretrain_steps: int = 300
    """Supervised steps on logged interactions before RL (0: RL from a random policy)."""
    pretrain_batch: int = 512
    """(user, liked item) pairs per pretraining step."""
    d_model: int = 64
    """Transformer width."""
    layers: int = 2
    """Transformer layers."""
    levels: int = 3
    """Hierarchical k-means levels of the semantic IDs (plus one disambiguation token)."""
    branching: int = 8
    """Clusters per level."""
    seed: int = 0
    """Seeds the semantic IDs, the model and the sampling."""


def _check_loss(loss: str) -> None:
    if loss not in POLICY_LOSSES:
        raise ValueError(f"generative loss {loss!r}; registered: {', '.join(sorted(POLICY_LOSSES))}")


class SemanticIdPolicy(nn.Module):
    """Causal transformer over [context, code_1 .. code_{L-1}] predicting code_1 .. code_L."""

    def __init__(self, user_dim: int, num_scenarios: int, length: int, vocab: int, d_model: int, layers: int,
                 branching: int):
        super().__init__()
        self.length, self.vocab = length, vocab
        self.scenario = nn.Embedding(num_scenarios, d_model)
        self.user = nn.Linear(user_dim, d_model)
        self.token = nn.Embedding(length * vocab, d_model)  # a token's id depends on its position
        self.position = nn.Parameter(torch.zeros(length, d_model))
        layer = nn.TransformerEncoderLayer(d_model, nhead=4, dim_feedforward=2 * d_model, batch_first=True, dropout=0.0)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, vocab)
        self.register_buffer("causal", torch.triu(torch.full((length, length), float("-inf")), 1))
        # Cluster tokens range over `branching` values, only the last (disambiguation) token over `vocab`.
        legal = torch.zeros(length, vocab)
        legal[:-1, branching:] = float("-inf")
        self.register_buffer("legal", legal)

    def logits(self, users: torch.Tensor, scenarios: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """[B, L, V]: position t's distribution over code token t given the context and codes < t."""
        context = (self.scenario(scenarios) + self.user(users))[:, None]
        offsets = torch.arange(self.length - 1) * self.vocab
        prefix = self.token(codes[:, :-1] + offsets) if self.length > 1 else context[:, :0]
        x = torch.cat([context, prefix], 1) + self.position
        return self.head(self.body(x, mask=self.causal)) + self.legal

    def token_logp(self, users, scenarios, codes) -> torch.Tensor:
        """[B, L] log-probabilities of the given codes."""
        logp = torch.log_softmax(self.logits(users, scenarios, codes), -1)
        return logp.gather(-1, codes[..., None])[..., 0]

    @torch.no_grad()
    def sample(self, users, scenarios, generator: torch.Generator) -> torch.Tensor:
        codes = torch.zeros(len(users), self.length, dtype=torch.long)
        for t in range(self.length):
            probs = torch.softmax(self.logits(users, scenarios, codes)[:, t], -1)
            codes[:, t] = torch.multinomial(probs, 1, generator=generator)[:, 0]
        return codes


class GenerativeRecommender:
    def __init__(self, env, cfg: GenerativeConfig):
        _check_loss(cfg.loss)
        self.env, self.cfg = env, cfg
        torch.manual_seed(cfg.seed)
        self.ids: SemanticIds = build_semantic_ids(env.item_factors, cfg.levels, cfg.branching, cfg.seed)
        self.users = torch.as_tensor(env.obs_user, dtype=torch.float32)
        self.policy = SemanticIdPolicy(self.users.shape[1], env.S, self.ids.length, self.ids.vocab, cfg.d_model,
                                       cfg.layers, cfg.branching)
        self.opt = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr)
        self.rng = np.random.default_rng(cfg.seed)
        # Requests come from their own stream, drawn the same way whatever the loss: every copy made by
        # `with_loss` then serves the identical request sequence (SA-GCPO's extra draws of engaged items
        # come from `self.rng` and no longer shift the requests of later iterations).
        self.request_rng = np.random.default_rng([cfg.seed, 1])
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.samples = 0
        self.reference: SemanticIdPolicy | None = None

    def pretrain(self) -> list[dict]:
        """Next-item cross-entropy on logged likes (scenario drawn at random: the logs carry none); the
        result is also the frozen reference policy of the KL penalty."""
        data = self.env.data
        liked = [items[ratings >= 4] for items, ratings in zip(data.train, data.train_ratings)]
        users, items = np.concatenate([np.full(len(i), u) for u, i in enumerate(liked)]), np.concatenate(liked)
        history = []
        for step in range(self.cfg.pretrain_steps):
            pick = self.rng.integers(len(users), size=self.cfg.pretrain_batch)
            u = self.users[users[pick]]
            s = torch.as_tensor(self.rng.integers(self.env.S, size=len(pick)))
            codes = torch.as_tensor(self.ids.codes[items[pick]])
            loss = -self.policy.token_logp(u, s, codes).sum(-1).mean()
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            history.append({"pretrain_step": step + 1, "nll": float(loss.detach())})
        self.reference = copy.deepcopy(self.policy).requires_grad_(False)
        self.opt = torch.optim.Adam(self.policy.parameters(), lr=self.cfg.lr)  # RL starts with fresh moments
        return history

    def with_loss(self, loss: str) -> "GenerativeRecommender":
        """A copy (weights, reference, random state) that continues with another group loss: losses
        compared from one pretrained model on the same request stream."""
        _check_loss(loss)
        other = copy.deepcopy(self, {id(self.env): self.env})  # the env (user model, catalog) is shared, not copied
        other.cfg = dataclasses.replace(self.cfg, loss=loss)
        return other

    def rewards(self, users: np.ndarray, scenarios: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(reward [B, G], valid [B, G]): expected mapped reward, or the format penalty for invalid codes."""
        items = np.array([[self.ids.item(c) if self.ids.item(c) is not None else -1 for c in row] for row in codes])
        valid = items >= 0
        reward = self.env.expected_reward(users[:, None], scenarios[:, None], np.maximum(items, 0))
        return np.where(valid, reward, self.cfg.format_penalty), valid

    def engaged_reward(self, users: np.ndarray, scenarios: np.ndarray) -> np.ndarray:
        """SA-GCPO's R_tgt: the reward of an item the user actually rated (a random training rating)."""
        items = np.array([self.rng.choice(self.env.data.train[u]) for u in users])
        return self.env.expected_reward(users, scenarios, items)

    def sample_requests(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The next `n` requests (users, scenarios) of the request stream."""
        return self.request_rng.integers(self.env.data.num_users, size=n), self.request_rng.integers(self.env.S, size=n)

    def iteration(self) -> dict:
        cfg, B, G = self.cfg, self.cfg.requests, self.cfg.group_size
        start = time.perf_counter()
        users, scenarios = self.sample_requests(B)
        u = self.users[np.repeat(users, G)]
        s = torch.as_tensor(np.repeat(scenarios, G))
        codes = self.policy.sample(u, s, self.generator)
        reward, valid = self.rewards(users, scenarios, codes.view(B, G, -1).numpy())
        r = torch.as_tensor(reward, dtype=torch.float32)
        advantages = ADVANTAGE_ESTIMATORS["group_norm"](r)
        if cfg.loss == "sa_gcpo":
            target = torch.as_tensor(self.engaged_reward(users, scenarios), dtype=torch.float32)
            advantages = group_clip(advantages, r, target)
        advantages = advantages.reshape(-1)
        with torch.no_grad():
            old_logp = self.policy.token_logp(u, s, codes)
            ref_logp = self.reference.token_logp(u, s, codes) if self.reference is not None else None
        mask = torch.ones_like(old_logp)
        hparams = {"clip_eps": cfg.clip_eps, "tau_pos": cfg.tau_pos, "tau_neg": cfg.tau_neg}
        for _ in range(cfg.epochs):
            logp = self.policy.token_logp(u, s, codes)
            per_token = POLICY_LOSSES[cfg.loss](logp, old_logp, advantages[:, None], **hparams)
            summed, outputs = aggregate_token_loss(per_token, mask, "seq_mean_token_mean")  # the GRPO paper's mean
            loss = summed / outputs
            kl = kl_penalty(logp, ref_logp).mean() if ref_logp is not None else torch.zeros(())
            loss = loss + cfg.kl_coef * kl
            self.opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(self.policy.parameters(), 1.0)
            self.opt.step()
        self.samples += B * G
        return {"reward_mean": float(reward.mean()), "valid_rate": float(valid.mean()), "loss": float(loss.detach()),
                "kl": float(kl.detach()), "samples": self.samples, "iteration_s": time.perf_counter() - start}

    def train(self, log=None) -> list[dict]:
        """Pretraining (if configured), then the RL iterations; one history row per RL iteration."""
        if self.cfg.pretrain_steps and self.reference is None:
            self.pretrain()
        history = []
        for i in range(self.cfg.iterations):
            row = {"iteration": i + 1, **self.iteration()}
            history.append(row)
            if log:
                log(row)
        return history

    @torch.no_grad()
    def scores(self, obs: np.ndarray, scenario: int, users: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Candidates ranked by the log-likelihood of their semantic IDs (the `recsys_eval` protocol)."""
        B, K = candidates.shape
        codes = torch.as_tensor(self.ids.codes[candidates.reshape(-1)])
        u = self.users[np.repeat(users, K)]
        s = torch.full((B * K,), scenario, dtype=torch.long)
        return self.policy.token_logp(u, s, codes).sum(-1).view(B, K).numpy()
