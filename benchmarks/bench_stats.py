"""Speed of the paired comparison in lahis_ctrl.eval.stats: bootstrap CI + p-value on 10,000 items.

    python benchmarks/bench_stats.py [--items 10000] [--resamples 2000] [--repeats 3]

Times paired_difference (percentile paired bootstrap CI plus its p-value) on synthetic per-item outcomes:
- binary: 0/1 outcomes (QA accuracy, off-target yes/no), p-value by exact McNemar;
- continuous: real-valued outcomes (log-odds, per-item log-perplexity), p-value by the sign-flip test, which
  costs as much again as the bootstrap.
Reports the median wall seconds of --repeats runs (after one warm-up run) and this process's CPU seconds, and
whether the goal (< 1 s on 2 cores) is met. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

from lahis_ctrl.eval.stats import paired_difference

GOAL_S = 1.0


def data(kind: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    if kind == "binary":
        return (rng.random(n) < 0.55).astype(float), (rng.random(n) < 0.57).astype(float)
    a = rng.normal(2.0, 0.5, n)
    return a, a + rng.normal(-0.01, 0.3, n)


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds of repeats calls, after one warm-up call."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    print(f"numpy {np.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"{args.items:,} items x {args.resamples:,} resamples, median of {args.repeats} runs\n")
    print("| outcomes | p-value | wall s | CPU s | effect | CI | p | goal < 1 s |")
    print("|---|---|---:|---:|---:|---|---:|---|")
    met = True
    for kind in ("binary", "continuous"):
        a, b = data(kind, args.items)
        run = lambda: paired_difference(a, b, n_resamples=args.resamples, seed=0)  # noqa: E731
        wall, cpu = timed(run, args.repeats)
        c = run()
        met &= wall < GOAL_S
        print(f"| {kind} | {c.method.split(', ')[1]} | {wall:.3f} | {cpu:.3f} | {c.effect:+.4f} | "
              f"[{c.ci[0]:+.4f}, {c.ci[1]:+.4f}] | {c.p_value:.3g} | {'met' if wall < GOAL_S else 'MISSED'} |")
    print(f"\ngoal '< {GOAL_S:g} s on 2 cores' per comparison: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
