"""The committed comparison: ACMR, the built-ins in both scopes and the cross-market baselines, per market.

    python bench/compare_markets.py --markets IN,JP --seeds 2020,2021,2022
    python bench/compare_markets.py --markets DE,FR,CA,MX,UK --seeds 2020

Every model is selected on valid under the sound ``market`` protocol and the
selected model is tested under ``market`` and under the paper's protocol, so
one training serves both tables: ``bench/results/compare/`` holds results.csv,
table.md and plot.png (``market``), table-paper.md and plot-paper.png
(``paper``) and the per-user test metrics. Re-running the command skips the
finished cells, so the grid grows market by market and seed by seed.

Settings shared by every model: ``epochs`` (50) caps every training phase and
``stopping_step`` (5) is the patience on valid; ACMR keeps its own yaml
(at most 4 pre-training epochs, patience 5).
"""

import argparse
import os
import sys
import time
import warnings

from recbole_cmr.compare import compare

MODELS = "ACMR,Pop,ItemKNN,EASE,BPR,NeuMF,LightGCN,SASRec,FOREC,MANeuMF,M3Rec"
SETTINGS = {"epochs": 50, "stopping_step": 5}


def main(argv=None):
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markets", default="IN,JP")
    parser.add_argument("--seeds", default="2020")
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)
    work = os.path.join(os.path.dirname(os.path.abspath(__file__)), "work")
    for market in args.markets.split(","):  # market by market, so every finished market is a complete row set
        started = time.time()
        out = compare(args.models.split(","), [market], [int(s) for s in args.seeds.split(",")], "market",
                      ("single", "++"), os.path.join(args.results, "compare"), {"dataset": "xmarket", **SETTINGS},
                      os.path.join(work, "pretrained"), test_protocols=["paper"])
        print(f"{market}: {time.time() - started:.0f} s -> {out}/table.md, {out}/table-paper.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
