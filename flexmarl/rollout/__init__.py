"""Rollout side: inference backends (how actions are computed) and the rollout worker (env stepping)."""

from flexmarl.rollout.backend import ActOutput, InferenceBackend, RandomPolicyBackend, TorchPolicyBackend, make_backend
from flexmarl.rollout.checks import EnvOutputError, EnvStepError
from flexmarl.rollout.request import RolloutRequest, RolloutResult
from flexmarl.rollout.worker import RolloutWorker

__all__ = [
    "ActOutput",
    "EnvOutputError",
    "EnvStepError",
    "InferenceBackend",
    "RolloutRequest",
    "RolloutResult",
    "RolloutWorker",
    "RandomPolicyBackend",
    "TorchPolicyBackend",
    "make_backend",
]
