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


def _source_hash() -> str:
    """Changes when the code that builds the models changes (so a cached build is never stale)."""
    modules = (flexmarl.llm.build, flexmarl.llm.models, flexmarl.llm.warm_start, flexmarl.llm.tasks.speaker_listener)
    digest = hashlib.sha256(repr(sorted(TINY_BUILD.items())).encode())
    for module in modules:
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:12]


@pytest.fixture(scope="session")
def tiny_task_models(tmp_path_factory) -> dict[str, Path]:
    """{agent: checkpoint dir} of the speaker-listener task, built once. The folder sits beside pytest's
    numbered temp folders (which rotate), keyed by the builder's source, so later sessions reuse it;
    a file lock lets concurrent sessions share one build."""
    from flexmarl.llm.build import build_task_models

    root = tmp_path_factory.getbasetemp().parent / f"flexmarl-tiny-models-{_source_hash()}"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return build_task_models("speaker_listener", root / "speaker_listener", seed=0, **TINY_BUILD)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
