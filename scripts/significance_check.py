"""How often the leaderboard's ✓ mark and 95 % interval are right, in simulation (the leaderboard's own functions).

Each simulated experiment trains two models of S seeds on one test set of N binary images: image i is right for a
seed when skill + noise_seed + difficulty_i + own_i + noise_(seed, i) > 0, with difficulty shared by both models,
`own` a model's own hard images and the seed noise (`--seed-sd`) the training variance. With equal skills (H0)
the mark's rate is its false-positive rate (the level says 5 %); with `--delta` > 0 its power. The interval's
coverage is that of the better model's expected ACC over seeds and test sets.

    python scripts/significance_check.py                        # 3 seeds, seed-dominated noise: the table in docs/design.md
    python scripts/significance_check.py --seeds 10 --delta 0.3

"old" is the mark and interval before this check: seeds drawn with replacement, the mark one-sided.
"""

from __future__ import annotations

import argparse
import zlib

import numpy as np
from scipy import stats

from benchmark import metrics

LEVEL = 0.05


def old_draws(per_seed: np.ndarray, key: str) -> np.ndarray:
    """The earlier two-level draws: each resample averages S seeds drawn with replacement."""
    n_seeds, n_resamples = per_seed.shape
    indices = np.random.default_rng([0, zlib.crc32(key.encode())]).integers(0, n_seeds, size=(n_resamples, n_seeds))
    return per_seed[indices, np.arange(n_resamples)[:, None]].mean(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--experiments", type=int, default=400)
    parser.add_argument("--seed-sd", type=float, default=0.3, help="training variance (in the logit)")
    parser.add_argument("--own", type=float, default=0.3, help="sd of a model's own image difficulty")
    parser.add_argument("--delta", type=float, default=0.0, help="skill of model A over B (0: equal, H0)")
    args = parser.parse_args()

    rng = np.random.default_rng(11)
    counts = metrics.resample_counts(args.images)
    spread = np.sqrt(args.seed_sd ** 2 + 1 + args.own ** 2 + 1.1 ** 2)
    truth = {"A": stats.norm.cdf((1.0 + args.delta) / spread), "B": stats.norm.cdf(1.0 / spread)}
    marked = {"old": 0, "new": 0}
    covered = {"old": 0, "new": 0}
    for _ in range(args.experiments):
        difficulty = rng.normal(0, 1.0, args.images)
        cells = {}
        for model, skill in (("A", 1.0 + args.delta), ("B", 1.0)):
            own = difficulty + rng.normal(0, args.own, args.images)
            correct = np.array([skill + rng.normal(0, args.seed_sd) + own + rng.normal(0, 1.1, args.images) > 0
                                for _ in range(args.seeds)], dtype=float)
            per_seed = (counts @ correct.T).T / args.images
            key = f"test|{model}|28|fine_tune"
            cells[model] = {"mean": correct.mean(), "values": correct.mean(axis=1), "images": per_seed.mean(axis=0),
                            "old": old_draws(per_seed, key),
                            "new": metrics.hierarchical_draws(per_seed, metrics.seed_noise(args.seeds, key))}
        for kind in ("old", "new"):
            low, high = np.percentile(cells["A"][kind], [2.5, 97.5])
            covered[kind] += low <= truth["A"] <= high
        best, other = sorted(cells, key=lambda m: -cells[m]["mean"])
        if args.delta and best != "A":
            continue  # power counts marks on the better model only
        b, o = cells[best], cells[other]
        marked["old"] += metrics.paired_pvalue_from_draws(b["old"], o["old"], "acc") < LEVEL
        if args.seeds >= metrics.MIN_SEEDS_TO_TEST:  # the leaderboard tests no cell with fewer seeds
            marked["new"] += max(metrics.welch_pvalue(b["values"], o["values"]),
                                 metrics.paired_pvalue_from_draws(b["images"], o["images"], "acc",
                                                                  alternative="two-sided")) < LEVEL
    what = "false 'best' (H0)" if args.delta == 0 else f"'best' on the better model (delta {args.delta})"
    print(f"{args.experiments} experiments, {args.images} images, {args.seeds} seeds, seed sd {args.seed_sd}, "
          f"own {args.own}")
    for kind in ("old", "new"):
        rate = (f"{marked[kind] / args.experiments:.3f}" if kind == "old" or args.seeds >= metrics.MIN_SEEDS_TO_TEST
                else f"never (untested below {metrics.MIN_SEEDS_TO_TEST} seeds)")
        print(f"  {kind}: {what} {rate}; 95 % interval covers {covered[kind] / args.experiments:.3f}")


if __name__ == "__main__":
    main()
