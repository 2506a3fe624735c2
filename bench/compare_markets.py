"""The committed comparison: ACMR, the built-ins in both scopes and the cross-market baselines, per market.

    python bench/compare_markets.py --markets IN,JP --seeds 2020,2021,2022
    python bench/compare_markets.py --markets DE,FR,CA,MX,UK --seeds 2020
    python bench/compare_markets.py --markets FR --models SASRec --scopes single

Every model is selected on valid under the sound ``market`` protocol and the
selected model is tested under ``market``, ``full`` and the paper's protocol, so
one training serves every table: ``bench/results/compare/`` holds results.csv,
table.md and plot.png (``market``), table-full.md, table-paper.md and their plots,
the per-user test metrics and summary.md (test NDCG@10 per market, one
table per protocol, the tables the README shows). Metrics are expected values over
random order among tied candidates; candidates outside a model's training rows rank
last (``untrained_items: last``). The grid evaluated with RecBole's tie order
(lowest item id first) and model scores for untrained items is kept, for reference,
in ``bench/results/compare-topk-ties/``. Re-running the command skips the
finished cells, so the grid grows market by market and seed by seed.

Settings shared by every model: ``epochs`` (50) caps every training phase and
``stopping_step`` (5) is the patience on valid; two-phase models (ACMR, FOREC)
use both in each phase.
"""

import argparse
import os
import signal
import sys
import time
import warnings
from collections import defaultdict

import numpy as np

from recbole_cmr.compare import REFERENCES, compare, mean_text
from recbole_cmr.config import make_config
from recbole_cmr.data.dataset import create_dataset
from recbole_cmr.utils import (
    CrossMarketError,
    int_list,
    interrupt_line,
    io_error_line,
    name_list,
    positive_int,
    raise_terminated,
    read_csv_rows,
    write_text,
)

MODELS = ("ACMR,Pop,ItemKNN,EASE,BPR,NeuMF,WideDeep,LightGCN,SASRec,BERT4Rec,FOREC,MANeuMF,M3Rec,CoNet,DDTCDR,MMoE,"
          "CrossStitch,CMRanker")
SETTINGS = {"epochs": 50, "stopping_step": 5}
MARKET_ORDER = ["in", "jp", "de", "fr", "mx", "uk", "ca"]  # smallest to largest
PROTOCOL_ORDER = ("market", "full", "paper")  # the sound ones first


def market_list(text):
    """The markets of a bench command (lower case), checked against the dataset before its first run: an unknown
    one is one line listing the known ones, not a traceback hours in."""
    markets = name_list(text.lower(), "--markets")
    dataset = create_dataset(make_config("Pop", markets[0], None, {"dataset": "xmarket", "state": "WARNING"}))
    for market in markets:
        dataset.market_id(market)
    return markets


def bench_command(body, args, interrupted="continues from the finished cells"):
    """Run a bench command's ``body(args)``: a bad argument or an unwritable results folder is one ``error:`` line
    and exit code 2, Ctrl-C one line and 130 (SIGTERM: 143) saying what the same command does (``interrupted``:
    text, or a function of the interruption)."""
    on_sigterm = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        return body(args)
    except CrossMarketError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a --results folder that is read-only, a file, or on a full disk
        print(io_error_line(err, "choose a writable --results folder with free space"), file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        what = interrupted(err) if callable(interrupted) else interrupted
        line, status = interrupt_line(err, f"the same command {what}")
        print(line, file=sys.stderr)
        return status
    finally:
        signal.signal(signal.SIGTERM, on_sigterm)


def protocol_table(values, labels, markets, seeds, protocol, seconds=None):
    """Markdown lines of one protocol's table: a row per label, a column per market (``values[(label, market,
    protocol)]`` lists the seeds' values; ``seeds[market]`` the market's seeds), best mean per column bold, and a
    wall-minutes column when ``seconds`` (per label) is given."""
    best = {m: max((np.mean(v) for (_, vm, p), v in values.items() if (vm, p) == (m, protocol) and v), default=None)
            for m in markets}
    wall = seconds is not None
    out = [f"## `{protocol}` protocol\n",
           "| model | " + " | ".join(m.upper() for m in markets) + (" | wall min |" if wall else " |"),
           "|---|" + "---|" * (len(markets) + wall)]
    for label in labels:
        cells = [mean_text(values[(label, m, protocol)], best[m], len(seeds[m]))
                 if (label, m, protocol) in values else "" for m in markets]
        out.append(f"| {label} | " + " | ".join(cells) + (f" | {seconds[label] / 60:.1f} |" if wall else " |"))
    return out + [""]


def summary(out_dir, metric="ndcg@10"):
    """Test ``metric`` per market, one table per protocol (``market`` first); best per column bold."""
    rows = [r for r in read_csv_rows(os.path.join(out_dir, "results.csv")) if r["split"] == "test"]
    values, seconds, seeds = defaultdict(list), defaultdict(float), defaultdict(set)
    for r in rows:
        values[(r["label"], r["market"], r["protocol"])].append(float(r[metric]))
        seeds[r["market"]].add(r["seed"])
        if r["protocol"] == "market":  # one training serves every protocol: count its time once
            seconds[r["label"]] += float(r["seconds"])
    markets = sorted(seeds, key=lambda m: MARKET_ORDER.index(m) if m in MARKET_ORDER else len(MARKET_ORDER))
    rank = {model: i for i, model in enumerate(MODELS.split(","))}  # ACMR, the built-ins, the cross-market baselines
    row_of = {r["label"]: r for r in rows}
    labels = sorted(row_of, key=lambda label: (rank.get(row_of[label]["model"], len(rank)),
                                               row_of[label]["scope"] == "++"))
    out = [f"# Test {metric.upper()} per market under the `market`, `full` and `paper` protocols\n",
           "Mean ± std over seeds (" + "; ".join(f"{m.upper()} {', '.join(sorted(seeds[m]))}" for m in markets) +
           "); best per column in bold; an empty cell has not been run, and one run on fewer of the market's "
           "seeds says how many. Every model selected on valid under "
           "`market`, then tested under each protocol; ties count as their expected value over a random order, "
           "untrained candidates rank last; wall minutes summed over the model's cells on this machine.\n"]
    for protocol in PROTOCOL_ORDER:
        out += protocol_table(values, labels, markets, seeds, protocol, seconds if protocol == "market" else None)
    path = os.path.join(out_dir, "summary.md")
    write_text(path, "\n".join(out))
    return path


def main(argv=None):
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markets", default="IN,JP")
    parser.add_argument("--seeds", default="2020")
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--scopes", default="single,++",
                        help="built-ins' training scopes (cross-market models ignore it)")
    parser.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--jobs", default="1", help="cells run at once, one process and one thread each")
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # RecBole's Config reads the command line too: keep the bench's own flags from it
    return bench_command(_main, args)


def _main(args):
    models, scopes = name_list(args.models, "--models"), name_list(args.scopes, "--scopes")
    markets, seeds = market_list(args.markets), int_list(args.seeds, "--seeds")
    jobs = positive_int(args.jobs, "--jobs")
    work = os.path.join(os.path.dirname(os.path.abspath(__file__)), "work")
    for market in markets:  # market by market, so every finished market is a complete row set
        started = time.time()
        out = compare(models, [market], seeds, "market", scopes, os.path.join(args.results, "compare"),
                      {"dataset": "xmarket", **SETTINGS}, os.path.join(work, "pretrained"),
                      test_protocols=["full", "paper"], references=REFERENCES, jobs=jobs)
        print(f"{market}: {time.time() - started:.0f} s -> {out}/table.md, {out}/table-paper.md, "
              f"{summary(out)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
