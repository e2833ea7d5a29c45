"""Start-up cost of the lm-eval registration hook (lahis_ctrl_lm_eval.pth), as ratios from one run.

Compares, in fresh interpreters of this environment: hook active vs opted out (LAHIS_NO_LM_EVAL_HOOK=1), for
  * `python -c pass`                          (what every Python process pays)
  * `python -c "import lm_eval.api.registry"` (what lm-eval pays: registering also loads its model table)
Conditions are interleaved in a shuffled order round by round; ratios are medians of per-round ratios
(absolute times drift on shared machines), and `-X importtime` gives the hook module's own import time.
Goals: the hook's own import < 1 ms; ratios within run-to-run noise (<= 1.05).
Usage: python benchmarks/bench_lm_eval_hook.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time

CASES = {"start": "pass", "lm_eval registry": "import lm_eval.api.registry"}


def clean_env() -> dict:
    env = dict(os.environ)
    # as users run: bytecode cached (these machines set PYTHONDONTWRITEBYTECODE, which recompiles every start)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("LAHIS_NO_LM_EVAL_HOOK", None)
    return env


def run_once(code: str, opt_out: bool) -> float:
    env = clean_env()
    if opt_out:
        env["LAHIS_NO_LM_EVAL_HOOK"] = "1"
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    probe = subprocess.run([sys.executable, "-c", "import sys; print(any(type(f).__name__ == '_Finder' and "
                            "type(f).__module__ == '_lahis_register' for f in sys.meta_path))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    if probe != "True":
        sys.exit("the hook is not installed in this environment (pip install -e . puts lahis_ctrl_lm_eval.pth in "
                 "site-packages); nothing to measure")
    own = []
    for _ in range(args.rounds):
        err = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True,
                             env=clean_env()).stderr
        own += [int(line.split("|")[1]) for line in err.splitlines() if line.rstrip().endswith(" _lahis_register")]
    print(f"_lahis_register import (self + children, -X importtime): median {statistics.median(own)} us")
    for name, code in CASES.items():
        run_once(code, False), run_once(code, True)  # warm the page cache and bytecode
        times = {False: [], True: []}
        ratios = []
        for _ in range(args.rounds):
            order = [False, True]
            random.shuffle(order)
            got = {o: run_once(code, o) for o in order}
            for o, t in got.items():
                times[o].append(t)
            ratios.append(got[False] / got[True])
        print(f"{name:18s} hook {statistics.median(times[False]) * 1e3:7.1f} ms   opted out "
              f"{statistics.median(times[True]) * 1e3:7.1f} ms   ratio hook/opt-out {statistics.median(ratios):.3f}"
              f"  ({args.rounds} rounds)")


if __name__ == "__main__":
    main()
