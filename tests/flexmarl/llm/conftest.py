import fcntl
import hashlib
from pathlib import Path

import pytest

import flexmarl.llm.build
import flexmarl.llm.models
import flexmarl.llm.tasks.speaker_listener
import flexmarl.llm.warm_start

TINY_BUILD = dict(warm_start_steps=200, warm_start_batch=32, sft_examples=1024, eval_queries=16)
"""The speaker-listener models other tests run: default sizes (vLLM-loadable), a short warm start
(well under a minute on one core); they answer in format and succeed now and then."""


LEARNING_BUILD = dict(warm_start_steps=400, eval_queries=64)
"""Models for the learning test: a longer warm start (about a minute on one core), after which the team
visibly improves within 30 RL iterations (the TINY_BUILD team does not)."""


def _source_hash(settings: dict) -> str:
    """Changes when the code that builds the models changes (so a cached build is never stale)."""
    modules = (flexmarl.llm.build, flexmarl.llm.models, flexmarl.llm.warm_start, flexmarl.llm.tasks.speaker_listener)
    digest = hashlib.sha256(repr(sorted(settings.items())).encode())
    for module in modules:
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:12]


def cached_speaker_listener_models(tmp_path_factory, settings: dict) -> dict[str, Path]:
    """{agent: checkpoint dir} of the speaker-listener task built with `settings`, once. The folder sits
    beside pytest's numbered temp folders (which rotate), keyed by the builder's source and the settings, so
    later sessions reuse it; a file lock lets concurrent sessions share one build."""
    from flexmarl.llm.build import build_task_models

    root = tmp_path_factory.getbasetemp().parent / f"flexmarl-tiny-models-{_source_hash(settings)}"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return build_task_models("speaker_listener", root / "speaker_listener", seed=0, **settings)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def tiny_task_models(tmp_path_factory) -> dict[str, Path]:
    """The speaker-listener models most tests run (TINY_BUILD)."""
    return cached_speaker_listener_models(tmp_path_factory, TINY_BUILD)


@pytest.fixture(scope="session")
def learning_task_models(tmp_path_factory) -> dict[str, Path]:
    """The speaker-listener models of the learning test (LEARNING_BUILD)."""
    return cached_speaker_listener_models(tmp_path_factory, LEARNING_BUILD)


@pytest.fixture(scope="session")
def chat_checkpoints(tmp_path_factory) -> dict[str, str]:
    """{family: checkpoint dir} of tiny random checkpoints shaped like instruct ones (chat_checkpoints.py)."""
    from tests.flexmarl.llm.chat_checkpoints import FAMILIES, build_chat_checkpoint

    root = tmp_path_factory.mktemp("chat-checkpoints")
    return {family: str(build_chat_checkpoint(root / family, family)) for family in FAMILIES}
