"""A greedy scoring rate two ways, from the same episodes of the same final checkpoints: ours (a fixed set of
seeded episodes, every one counted) and the on-policy MAPPO / HARL evaluation loops' (50 env copies playing
back to back, the first 100 episodes to finish counted), whose numbers are the published GRF curves. The two
differ when a scoring episode is shorter than one that does not score (the loops leave out the episodes
still running when the 100th finishes). `benchmarks.statistics.simulated_completion_order_rate` runs the
loops' count on episodes drawn from the measured ones.

    .venv/bin/python -m benchmarks.completion_order RUN_DIR [RUN_DIR ...] --episodes 250 \
        --out benchmarks/results/grf/completion_order.json
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.statistics import simulated_completion_order_rate
from orchestrator.run_dir import latest_checkpoint, load_run_config
from orchestrator.train import evaluate_checkpoint, random_policy_baseline

SEED = 12345
"""The suites' final-evaluation seed: the first N of these episodes are a suite's N final episodes."""


def _rates(result: dict, draws: int) -> dict:
    wins, lengths = np.asarray(result["episodes/win"]), np.asarray(result["episodes/length"])
    return {
        "episodes": len(wins),
        "ours_first_100": float(wins[:100].mean()),
        "ours_all": float(wins.mean()),
        "completion_order": simulated_completion_order_rate(wins, lengths, draws=draws).as_dict(),
        "mean_length": {"scored": float(lengths[wins == 1].mean()) if wins.any() else None,
                        "not_scored": float(lengths[wins == 0].mean()) if (wins == 0).any() else None},
    }


def measure(run_dir: str, episodes: int, draws: int) -> dict:
    checkpoint = latest_checkpoint(Path(run_dir))
    result = evaluate_checkpoint(checkpoint, episodes, SEED)
    return {"run": run_dir, "checkpoint": str(checkpoint), **_rates(result, draws)}


def measure_random(run_dir: str, episodes: int, draws: int) -> dict:
    cfg = load_run_config(Path(run_dir))
    return {"run": "uniform random", **_rates(random_policy_baseline(cfg, episodes, SEED), draws)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories (their latest checkpoint is evaluated)")
    parser.add_argument("--episodes", type=int, default=250)
    parser.add_argument("--draws", type=int, default=1000, help="simulated evaluation loops")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    with ProcessPoolExecutor(args.jobs) as pool:
        jobs = [pool.submit(measure, run, args.episodes, args.draws) for run in args.runs]
        jobs.append(pool.submit(measure_random, args.runs[0], args.episodes, args.draws))
        results = [job.result() for job in jobs]
    Path(args.out).write_text(json.dumps({"episodes_seed": SEED, "copies": 50, "counted": 100,
                                          "results": results}, indent=1) + "\n")
    for r in results:
        print(f"{r['run']}: ours {r['ours_first_100']:.3f} (first 100) {r['ours_all']:.3f} (all {r['episodes']}); "
              f"completion order {r['completion_order']}; lengths {r['mean_length']}")


if __name__ == "__main__":
    main()
