"""ACMR for a market it never pre-trained on (the paper's section 5.5, Table 4), on our split.

    python bench/acmr_cold_start.py --markets IN,JP --seeds 2020,2021,2022

Per target market and seed, one two-phase ACMR run with ``train_markets: source``: pre-training on the
other six markets only (no row of the target), then fine-tuning on the target's training rows. Its
``pretrain`` results are the paper's "Pre-train*" (a model that never saw the market), its ``finetune``
results "Fine-tune*" (the cold-start deployment). Both are tested under ``market``, ``paper`` and
``full``, with the grid's settings (at most 50 epochs per phase, patience 5, selection on valid under
``market``). ``bench/results/acmr_cold_start/`` gets ``results.csv`` (one row per market, seed, phase,
protocol and split; finished runs are skipped when the command is run again, and an interrupted one goes on
from its last finished epoch) and ``summary.md``: test
NDCG@10 of both rows beside ACMR trained on every market and Pop (single) from the comparison grid.
"""

import argparse
import os
import sys
import warnings
from collections import defaultdict

from compare_markets import SETTINGS, bench_command, market_list, protocol_table

from recbole_cmr.config import make_config
from recbole_cmr.quick_start import find_resumable_run, run, run_seconds
from recbole_cmr.utils import int_list, read_csv_rows, write_csv_rows, write_text

BENCH = os.path.dirname(os.path.abspath(__file__))
FIELDS = ["market", "seed", "phase", "protocol", "split", "recall@5", "recall@10", "ndcg@5", "ndcg@10", "mrr@10",
          "seconds"]
PROTOCOLS = ("market", "paper", "full")


def summary(rows, results, metric="ndcg@10"):
    """Test ``metric`` (mean ± std over seeds) per protocol: Pre-train*, Fine-tune*, and from the comparison grid
    in ``results``, ACMR and Pop (single)."""
    grid = [r for r in read_csv_rows(os.path.join(results, "compare", "results.csv")) if r["split"] == "test"]
    values = defaultdict(list)
    for r in rows:
        if r["split"] == "test":
            name = {"pretrain": "Pre-train* (other markets only)", "finetune": "Fine-tune* (then the market)"}
            values[(name[r["phase"]], r["market"], r["protocol"])].append(float(r[metric]))
    for r in grid:
        if r["label"] in ("ACMR", "Pop (single)"):
            label = "ACMR (every market, then the market)" if r["label"] == "ACMR" else r["label"]
            values[(label, r["market"], r["protocol"])].append(float(r[metric]))
    markets = list(dict.fromkeys(r["market"] for r in rows))
    labels = ["Pre-train* (other markets only)", "Fine-tune* (then the market)",
              "ACMR (every market, then the market)", "Pop (single)"]
    seeds = {m: sorted({r["seed"] for r in rows if r["market"] == m}) for m in markets}
    out = [f"# ACMR in a market it never pre-trained on: test {metric.upper()}\n",
           "Mean ± std over seeds (" + "; ".join(f"{m.upper()} {', '.join(seeds[m])}" for m in markets) + "; best "
           "per column in bold). "
           "Pre-train*: ACMR pre-trained on the other six markets, its epoch selected on the target's valid; "
           "Fine-tune*: that model fine-tuned on the target's training rows. ACMR and Pop (single) are the "
           "comparison grid's cells (their seeds), for reference.\n"]
    for protocol in PROTOCOLS:
        out += protocol_table(values, labels, markets, seeds, protocol)
    path = os.path.join(results, "acmr_cold_start", "summary.md")
    write_text(path, "\n".join(out))
    return path


def main(argv=None):
    """The command; a bad argument is one ``error:`` line and exit code 2, Ctrl-C one line and 130 (the same command
    continues: finished runs are kept, an unfinished one goes on from its last finished epoch)."""
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markets", default="IN,JP")
    parser.add_argument("--seeds", default="2020,2021,2022")
    parser.add_argument("--results", default=os.path.join(BENCH, "results"))
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # RecBole's Config reads the command line too
    return bench_command(_main, args, "continues from the finished runs")


def _main(args):
    markets, seeds = market_list(args.markets), int_list(args.seeds, "--seeds")
    out = os.path.join(args.results, "acmr_cold_start")
    os.makedirs(out, exist_ok=True)
    results = os.path.join(out, "results.csv")
    rows = read_csv_rows(results)
    for market in markets:
        for seed in seeds:
            if any(r["market"] == market and r["seed"] == str(seed) for r in rows):
                continue
            print(f"ACMR cold start on {market.upper()}, seed {seed}", flush=True)
            config_dict = {**SETTINGS, "dataset": "xmarket", "train_markets": "source", "seed": seed,
                           "state": "WARNING", "checkpoint_dir": os.path.join(BENCH, "work", "cold_start")}
            resume = find_resumable_run(make_config("ACMR", market, None, config_dict),
                                        test_protocols=list(PROTOCOLS))
            path, run_rows = run("ACMR", market, config_dict=config_dict, test_protocols=list(PROTOCOLS),
                                 resume=resume)
            seconds = run_seconds(path)
            rows += [{**{k: r[k] for k in FIELDS if k in r}, "seed": str(seed), "seconds": seconds} for r in run_rows]
            write_csv_rows(results, rows, FIELDS)
            print(f"  {seconds:.0f} s, run folder {path}", flush=True)
    print(open(summary(rows, args.results)).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
