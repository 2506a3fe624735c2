"""Seconds to recommend the top 10 of the market's items to every user of a finished run.

    python bench/recommend_speed.py RUN_DIR [RUN_DIR ...]     # e.g. an ACMR and an EASE run on CA

For each run folder (one written by ``run_recbole_cmr.py`` or a grid's ``runs/``): seconds to rebuild it
(``load_run``: config, split, model, checkpoint) and seconds for ``recommend(run, k=10)`` over every
user of its target market, with the user and candidate counts, and the CPU seconds the process used for it
(which other work on the machine does not inflate, unlike the wall seconds). Appends to
``bench/results/recommend_speed.md``. Run it alone on the machine where it can be.
"""

import argparse
import os
import sys
import time
import warnings

from acmr_speed import cpu_model

from recbole_cmr.recommend import load_run, market_users, recommend

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "recommend_speed.md")


def main(argv=None):
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]
    lines = []
    for path in args.runs:
        started = time.time()
        run = load_run(path)
        loaded = time.time() - started
        users = market_users(run)
        started, cpu_started = time.time(), time.process_time()
        rows = recommend(run, users, k=args.k)
        ranked, ranked_cpu = time.time() - started, time.process_time() - cpu_started
        lines.append(f"| {run.config['model']} | {run.config['target_market'].upper()} | {len(users)} | "
                     f"{len(run.dataset.target_items)} | {loaded:.1f} | {ranked:.1f} | {ranked_cpu:.1f} | "
                     f"{len(rows)} |")
        print(lines[-1], flush=True)
    new = not os.path.exists(RESULTS)
    with open(RESULTS, "a") as f:
        if new:
            f.write("# Top-k recommendation for every user of a market\n\n")
        f.write(f"\n{time.strftime('%Y-%m-%d')}, {cpu_model()}, k={args.k}, torch threads as the run's config\n\n"
                "| model | market | users | candidates | load_run s | recommend s | recommend CPU s | rows |\n"
                "|---|---|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
