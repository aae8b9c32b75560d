"""`flexmarl bench benchmarl`: our MAPPO against BenchMARL's on MPE simple_spread, side by side.

For each seed, one after the other in one call (so both meet the same machine): `flexmarl train
configs/demo.yaml` (352,000 env steps; one greedy evaluation, 50 episodes at the last iteration), then
BenchMARL's MAPPO at the same settings (benchmarks/benchmarl_mpe.py, in the virtualenv `make benchmarl`
builds). Wall time is each whole process (interpreter start, Ray or BenchMARL set-up, training and the
evaluations) and the ratio is BenchMARL's over ours, per seed. Results: benchmarks/results/mpe/vs_benchmarl.json.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from flexmarl.config import load_config

BENCHMARL_PYTHON = Path(".venv-benchmarl/bin/python")
OUT = Path("benchmarks/results/mpe/vs_benchmarl.json")
DEMO = Path("configs/demo.yaml")


class MissingSetupError(RuntimeError):
    """BenchMARL's virtualenv is not built; the CLI prints it as one `error:` line."""


def _timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _ours(seed: int, env_steps: int, output_dir: str) -> dict:
    iterations = env_steps // load_config(DEMO).run.batch_env_steps
    wall = _timed([sys.executable, "-m", "orchestrator.cli", "train", str(DEMO), f"run.seed={seed}",
                   f"run.output_dir={output_dir}", "run.progress=false", f"run.name=ours-seed{seed}",
                   f"run.iterations={iterations}", f"run.eval_every={iterations}", "run.eval_episodes=50"])
    (metrics,) = Path(output_dir).glob(f"ours-seed{seed}-*/metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    return {"wall_s": wall, "final_greedy_return": float(rows[-1]["eval/return_mean"]),
            "train_return_last3": float(np.mean([float(r["episode_return_mean"]) for r in rows[-3:]])),
            "env_steps": int(rows[-1]["env_steps"])}


def _benchmarl(seed: int, env_steps: int, output_dir: str) -> dict:
    result = Path(output_dir) / f"benchmarl-seed{seed}.json"
    # -P: not benchmarks/ first on sys.path, where statistics.py would shadow the standard library's
    wall = _timed([str(BENCHMARL_PYTHON), "-P", "benchmarks/benchmarl_mpe.py", "--seed", str(seed),
                   "--max-frames", str(env_steps), "--out", str(result)])
    return {"wall_s": wall, **json.loads(result.read_text())}


def run_vs_benchmarl(seeds: list[int], out: Path | None = None, env_steps: int = 352_000) -> dict:
    """`env_steps`: a multiple of the demo's 3,200-step batch (352,000: the demo's 110 iterations)."""
    if not BENCHMARL_PYTHON.exists():
        raise MissingSetupError(f"{BENCHMARL_PYTHON} not found: run `make benchmarl` first (BenchMARL's own virtualenv)")
    runs = []
    with tempfile.TemporaryDirectory(prefix="vs-benchmarl-") as output_dir:
        for seed in seeds:
            ours, theirs = _ours(seed, env_steps, output_dir), _benchmarl(seed, env_steps, output_dir)
            runs.append({"seed": seed, "ours": ours, "benchmarl": theirs,
                         "wall_ratio_benchmarl_over_ours": theirs["wall_s"] / ours["wall_s"]})
            print(f"seed {seed}: ours {ours['wall_s']:.0f} s, greedy {ours['final_greedy_return']:.2f}; BenchMARL "
                  f"{theirs['wall_s']:.0f} s, greedy {theirs['final_greedy_return']:.2f}", flush=True)
    ratios = [r["wall_ratio_benchmarl_over_ours"] for r in runs]
    summary = {
        "seeds": seeds, "env_steps": env_steps,
        "wall_ratio_benchmarl_over_ours": {"mean": float(np.mean(ratios)), "min": float(min(ratios)),
                                           "max": float(max(ratios))},
        "final_greedy_return": {who: {"mean": float(np.mean([r[who]["final_greedy_return"] for r in runs])),
                                      "per_seed": [r[who]["final_greedy_return"] for r in runs]}
                                for who in ("ours", "benchmarl")},
        "wall_s": {who: [r[who]["wall_s"] for r in runs] for who in ("ours", "benchmarl")},
    }
    result = {"summary": summary, "runs": runs, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "note": "each seed: ours, then BenchMARL, one after the other on the same machine; whole-process wall"}
    path = out or OUT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return summary
