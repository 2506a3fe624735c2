"""The committed comparison: ACMR, the built-ins in both scopes and the cross-market baselines, per market.

    python bench/compare_markets.py --markets IN,JP --seeds 2020,2021,2022
    python bench/compare_markets.py --markets DE,FR,CA,MX,UK --seeds 2020

Each protocol's grid lives in ``bench/results/compare-<protocol>/`` (results.csv,
table.md, plot.png, per-user test metrics); re-running the command skips the
finished cells, so grids grow market by market and seed by seed. Pre-trained
checkpoints go to ``bench/work/pretrained`` and are shared by the two protocols
where that is sound (see ``recbole_cmr.compare``).

Settings shared by every model (the grid's caption repeats them):
``epochs`` caps every training phase, ``stopping_step`` is the patience on
valid, and ACMR keeps its 4th pre-training epoch (``pretrain_valid: False``)
so that one pre-training serves both protocols; fine-tuning still selects on
the protocol's valid.
"""

import argparse
import os
import sys
import time
import warnings

from recbole_cmr.compare import compare

MODELS = "ACMR,Pop,ItemKNN,EASE,BPR,NeuMF,LightGCN,SASRec,FOREC,MANeuMF,M3Rec"
SETTINGS = {"epochs": 50, "stopping_step": 5, "pretrain_valid": False}


def main(argv=None):
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markets", default="IN,JP")
    parser.add_argument("--seeds", default="2020")
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--protocols", default="market,paper")
    parser.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)
    work = os.path.join(os.path.dirname(os.path.abspath(__file__)), "work")
    for market in args.markets.split(","):  # market by market, so every finished market is a complete row set
        for protocol in args.protocols.split(","):
            started = time.time()
            out = compare(args.models.split(","), [market], [int(s) for s in args.seeds.split(",")], protocol,
                          ("single", "++"), os.path.join(args.results, f"compare-{protocol}"),
                          {"dataset": "xmarket", **SETTINGS}, os.path.join(work, "pretrained"))
            print(f"{market} {protocol}: {time.time() - started:.0f} s -> {out}/table.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
