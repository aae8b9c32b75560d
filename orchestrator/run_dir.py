"""Run directory: resolved config, metrics.csv, TensorBoard events, checkpoints.

    runs/<name>-<timestamp>/
        config.yaml          resolved config (what `--resume` reloads)
        metrics.csv          one row per iteration; flushed every row
        eval_episodes.jsonl  each greedy evaluation's per-episode values (one line per evaluation)
        tb/                  TensorBoard events
        checkpoints/iter_000010/{state.pt, meta.json}
        error.txt            written when a run stops on an error (error.<time>.txt once a resume started)

It is created only once the run's actors are placed, so a config or placement error leaves none behind.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import time
from pathlib import Path
from typing import Mapping

import torch
import yaml

from flexmarl.config import Config, ConfigError, config_from_saved

CHECKPOINT_FORMAT = "flexmarl-checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, or does not match the run it is loaded into."""


def choose_run_dir(cfg: Config) -> Path:
    """`<run.output_dir>/<run.name>-<timestamp>` (then -1, -2, ... if taken), not created yet."""
    base = Path(cfg.run.output_dir) / f"{cfg.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        path, n = Path(f"{base}-{n}"), n + 1
    return path


def new_run_dir(cfg: Config) -> Path:
    """A fresh run directory, created now with its config.yaml."""
    path = choose_run_dir(cfg)
    prepare_run_dir(path, cfg)
    return path


def prepare_run_dir(run_dir: Path, cfg: Config, resume: bool = False) -> None:
    """Create the run directory if needed and write the resolved config.yaml. On resume, an error.txt of
    the stopped run is kept as error.<when it was written>.txt: the directory no longer claims a failure."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_run_config(run_dir, cfg)
    error = run_dir / "error.txt"
    if resume and error.exists():
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(error.stat().st_mtime))
        archived, n = run_dir / f"error.{stamp}.txt", 1
        while archived.exists():
            archived, n = run_dir / f"error.{stamp}-{n}.txt", n + 1
        error.rename(archived)


RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
"""Set by Ray's job supervisor in a job's entrypoint process (`ray job submit -- flexmarl train ...`)."""


def check_output_dir(cfg: Config, environ: Mapping[str, str]) -> None:
    """In a Ray job the working directory is Ray's temporary copy of `--working-dir`, deleted with the job's
    Ray session: a relative `run.output_dir` would put the run there (printed as runs/..., then lost), so
    a job must name an absolute one."""
    if RAY_JOB_ENV in environ and not Path(cfg.run.output_dir).is_absolute():
        raise ConfigError("run.output_dir", cfg.run.output_dir,
                          "an absolute path when running as a Ray job (ray job submit), on storage that outlives "
                          "the job (its working directory is Ray's temporary copy of --working-dir), e.g. "
                          "run.output_dir=/shared/runs")


def save_run_config(run_dir: Path, cfg: Config) -> None:
    (Path(run_dir) / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def resume_command(run_dir: Path, address: str | None = None) -> str:
    """The command that continues a run, on the same cluster when it ran on one."""
    return f"flexmarl train --resume {run_dir}" + (f" --address {address}" if address else "")


def load_run_config(run_dir: Path, overrides: list[str] | None = None) -> Config:
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise CheckpointError(f"{run_dir} is not a run directory: no config.yaml")
    return config_from_saved(yaml.safe_load(path.read_text()), overrides)


class MetricsWriter:
    """metrics.csv (columns grow when new metrics appear: the file is rewritten) + TensorBoard."""

    def __init__(self, run_dir: Path, step_key: str, resume_after_iteration: int | None = None,
                 resume_step: int = 0):
        """`step_key`: the metric that is TensorBoard's step (the workload's progress unit). On resume, rows
        after `resume_after_iteration` are dropped and TensorBoard events after `resume_step` (the
        checkpoint's step) are purged: the resumed run writes those steps again."""
        self.path = Path(run_dir) / "metrics.csv"
        self.step_key = step_key
        self.rows: list[dict] = []
        if resume_after_iteration is not None and self.path.exists():
            with self.path.open() as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= resume_after_iteration]
        self.columns: list[str] = list(self.rows[0].keys()) if self.rows else []
        self._rewrite()
        from torch.utils.tensorboard import SummaryWriter

        purge = resume_step + 1 if resume_after_iteration is not None else None
        self.tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=purge)

    def _rewrite(self) -> None:
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, restval="")
            writer.writeheader()
            writer.writerows(self.rows)

    def write(self, metrics: dict) -> None:
        row = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        self.rows.append(row)
        new = [k for k in row if k not in self.columns]
        if new:
            self.columns += new
            self._rewrite()
        else:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.columns, restval="").writerow(row)
        step = int(row.get(self.step_key, row.get("iteration", 0)))
        for key, value in row.items():
            if key not in ("iteration", self.step_key) and not (isinstance(value, float) and math.isnan(value)):
                self.tb.add_scalar(key, value, step)
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()


EVAL_EPISODES = "eval_episodes.jsonl"


def record_eval_episodes(run_dir: Path, iteration: int, progress: dict, evaluation: dict) -> dict:
    """Append an evaluation's per-episode lists (`episodes/*`) to eval_episodes.jsonl, with the run's
    `progress` ({unit: total}, e.g. {"env_steps": 400}); returns the scalars that go to metrics.csv. A resumed run re-evaluates iterations after its checkpoint: readers keep the
    last line of each iteration."""
    scalars = {k: v for k, v in evaluation.items() if not isinstance(v, list)}
    episodes = {k.split("/", 1)[1]: v for k, v in evaluation.items() if isinstance(v, list)}
    if episodes:
        with (Path(run_dir) / EVAL_EPISODES).open("a") as f:
            f.write(json.dumps({"iteration": iteration, **progress, **episodes}) + "\n")
    return scalars


def read_eval_episodes(run_dir: Path) -> dict[int, dict]:
    """{iteration: {"env_steps": ..., "return": [...], "win": [...]}}, the last evaluation of each iteration."""
    path = Path(run_dir) / EVAL_EPISODES
    if not path.exists():
        return {}
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {line.pop("iteration"): line for line in lines}


def _signature(groups) -> dict:
    """What must match between a checkpoint and the run loading it: per group, the agents, the input widths,
    the action head, and (when used) the CNN encoders' image shapes."""
    if groups and hasattr(groups[0], "signature"):  # LLM model groups describe themselves
        return {g.name: g.signature() for g in groups}
    out = {}
    for g in groups:
        sig = {"agents": list(g.agents), "obs_dim": g.obs_dim, "critic_dim": g.critic_dim,
               "action": [g.action.kind, g.action.dim]}
        if g.action.kind == "multi_discrete":
            sig["action"].append(list(g.action.nvec))
        for key, image in (("obs_image", g.obs_image), ("critic_image", g.critic_image)):
            if image is not None:  # absent for flat inputs, so checkpoints written before images still load
                sig[key] = [image.frames, image.channels, image.height, image.width, image.channels_last]
        out[g.name] = sig
    return out


def save_checkpoint(run_dir: Path, cfg: Config, groups, state: dict) -> Path:
    """Write checkpoints/iter_NNNNNN/ atomically (temp dir, then rename); meta.json holds a sha256."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"iter_{state['iteration']:06d}"
    tmp = root / f".tmp-{final.name}"
    tmp.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "groups": _signature(groups), "state": state}, buffer)
    blob = buffer.getvalue()
    (tmp / "state.pt").write_bytes(blob)
    counters = {k: v for k, v in state.items() if k != "trainers"}  # iteration and the progress unit's total
    meta = {"format": CHECKPOINT_FORMAT, **counters, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    if final.exists():
        for f in final.iterdir():
            f.unlink()
        final.rmdir()
    tmp.rename(final)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((Path(run_dir) / "checkpoints").glob("iter_*"))
    return found[-1] if found else None


def resume_checkpoint(run_dir: Path, address: str | None = None) -> Path | None:
    """The latest checkpoint if it is intact; if not, a CheckpointError naming the newest intact one and
    the command that makes `--resume` continue from it (moving the unusable ones aside, not deleting them)."""
    found = sorted((Path(run_dir) / "checkpoints").glob("iter_*"))
    if not found:
        return None
    try:
        load_checkpoint(found[-1])
        return found[-1]
    except CheckpointError as exc:
        problem = exc
    for i in range(len(found) - 2, -1, -1):
        try:
            load_checkpoint(found[i])
        except CheckpointError:
            continue
        unusable = found[i + 1 :]
        moves = "; ".join(f"mv {p} {p.parent / ('corrupt-' + p.name)}" for p in unusable)
        raise CheckpointError(
            f"cannot resume {run_dir}: the latest checkpoint {found[-1].name} is unusable ({problem}). The newest "
            f"intact checkpoint is {found[i].name}; to continue from it, move the later ones aside and resume again: "
            f"{moves}; {resume_command(run_dir, address)}")
    raise CheckpointError(f"cannot resume {run_dir}: the latest checkpoint {found[-1].name} is unusable ({problem}) "
                          "and no earlier checkpoint is intact; start a new run")


def load_checkpoint(path: Path, groups=None) -> dict:
    """Verify and load a checkpoint directory; if `groups` is given, refuse a mismatching one."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    state_file, meta_file = path / "state.pt", path / "meta.json"
    if not state_file.exists() or not meta_file.exists():
        raise CheckpointError(f"{path} is not a checkpoint: expected state.pt and meta.json")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{meta_file} is corrupt: {exc}") from exc
    blob = state_file.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
        raise CheckpointError(f"{state_file} is corrupt: its sha256 does not match meta.json")
    try:
        data = torch.load(io.BytesIO(blob), weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{state_file} cannot be read: {exc}") from exc
    if data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{state_file}: format {data.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    if groups is not None:
        expected = _signature(groups)
        if data["groups"] != expected:
            raise CheckpointError(
                f"{path} does not match this run: checkpoint groups {data['groups']} vs run groups {expected}"
            )
    return data
