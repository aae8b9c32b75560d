"""FlexMARL: algorithms, models, rollout workers and trainers. The orchestrator package wires them."""

__version__ = "0.1.0"
