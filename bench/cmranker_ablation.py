"""Which of CMRanker's base scores matter: the model with one group of features left out, per market.

    python bench/cmranker_ablation.py --markets DE,FR,IN --seed 2020

Each row is CMRanker (yaml defaults) trained and selected as in the grid, tested under `market`, with
a group of its features dropped (``ranker_drop_features``); "other markets" drops every feature that reads
another market's rows, leaving a single-market ranker. Also the full model's LightGBM gain per feature.
Writes ``bench/results/cmranker_ablation.md`` (rows already there are kept: the command resumes).
"""

import argparse
import os
import sys
import warnings

from compare_markets import SETTINGS

from recbole_cmr.model.cmranker import FEATURES
from recbole_cmr.quick_start import run
from recbole_cmr.utils import read_csv_rows, write_csv_rows, write_text

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
GROUPS = {
    "none (the full model)": [],
    "EASE": ["ease_all", "ease_own"],
    "GF-CF filter": ["gfcf_all"],
    "co-occurrence": ["cooc_own", "cooc_others"],
    "popularity": ["log_pop_own", "log_pop_all", "markets_selling"],
    "history length": ["history_len"],
    "other markets": ["ease_all", "gfcf_all", "cooc_others", "log_pop_all", "markets_selling"],
}


def main(argv=None):
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markets", default="DE,FR,IN")
    parser.add_argument("--seed", type=int, default=2020)
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]
    table = os.path.join(RESULTS, "cmranker_ablation.csv")
    rows = read_csv_rows(table)
    for market in args.markets.lower().split(","):
        for group, dropped in GROUPS.items():
            if any((r["market"], r["dropped"], r["seed"]) == (market, group, str(args.seed)) for r in rows):
                continue
            print(f"{market.upper()}: without {group}", flush=True)
            path, result = run("CMRanker", market, config_dict={
                **SETTINGS, "seed": args.seed, "ranker_drop_features": dropped, "state": "WARNING",
                "checkpoint_dir": os.path.join(os.path.dirname(RESULTS), "work", "ablation")})
            test = next(r for r in result if r["split"] == "test")
            row = {"market": market, "dropped": group, "seed": args.seed, "ndcg@10": test["ndcg@10"],
                   "recall@10": test["recall@10"]}
            if not dropped:  # the run folder holds the ranker's gain per feature
                row.update({f"gain {g['feature']}": g["gain"]
                            for g in read_csv_rows(os.path.join(path, "feature_gain.csv"))})
            rows.append(row)
            write_csv_rows(table, rows)
    lines = ["# CMRanker without each group of base features (test, `market` protocol)\n",
             "| market | seed | features left out | NDCG@10 | Recall@10 |", "|---|---|---|---|---|"]
    lines += [f"| {r['market'].upper()} | {r['seed']} | {r['dropped']} | {float(r['ndcg@10']):.4f} | "
              f"{float(r['recall@10']):.4f} |" for r in rows]
    lines += ["", "LightGBM gain per feature of the full model:", "",
              "| market | " + " | ".join(FEATURES) + " |", "|---|" + "---|" * len(FEATURES)]
    lines += [f"| {r['market'].upper()} | " + " | ".join(f"{float(r[f'gain {f}']):.0f}" for f in FEATURES) + " |"
              for r in rows if r.get(f"gain {FEATURES[0]}")]
    write_text(os.path.join(RESULTS, "cmranker_ablation.md"), "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
