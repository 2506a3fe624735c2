"""The paper's ablations (its section 5.3, Fig. 3) and sensitivity study (section 5.6, Fig. 6) on our split.

    python bench/acmr_studies.py ablation --markets IN,JP,DE,FR,MX,UK,CA --seeds 2020
    python bench/acmr_studies.py sensitivity --markets DE --seeds 2020

Each point is one ACMR run with the grid's settings (at most 50 epochs per phase, patience 5, selected on
valid under ``market``, tested under ``market``, ``paper`` and ``full``) and one change:

- ablation: without market embeddings (``use_market_embedding: False``), without multi-market data
  (``train_markets: target, finetune: False``: one phase on the target's rows), without fine-tuning
  (``finetune: False``: one phase on every market's rows). Each is compared with full ACMR, the comparison
  grid's ACMR cell of the same market and seed, by a Wilcoxon signed-rank test over users (test NDCG@10).
- sensitivity: embedding size d, history length SL (30-70), layers L and heads H, one at a time around the
  defaults (d 32, SL 50, L 4, H 8; run once, as the point "defaults"), with the mean training seconds per
  pre-training epoch beside each point (the paper's argument for its choices is a trade-off with time).

Results land in ``bench/results/acmr_<study>/``: ``results.csv`` (one row per point, seed, protocol and
split; finished points are skipped when the command is run again, and a killed run continues from its last
finished epoch), ``per_user/``, ``summary.md`` and ``plot.png``. Run it alone on the machine: the seconds per
epoch are only comparable then.
"""

import argparse
import os
import shutil
import sys
import warnings
from collections import defaultdict

import matplotlib
import numpy as np
from compare_markets import SETTINGS, bench_command, market_list
from scipy import stats

from recbole_cmr.config import make_config
from recbole_cmr.quick_start import find_resumable_run, run, run_seconds
from recbole_cmr.utils import (
    CrossMarketError,
    int_list,
    name_list,
    read_csv_rows,
    write_atomically,
    write_csv_rows,
    write_text,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BENCH = os.path.dirname(os.path.abspath(__file__))
PROTOCOLS = ("market", "paper", "full")
METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10", "mrr@10")
FIELDS = ["point", "market", "seed", "protocol", "split", *METRICS, "epochs", "seconds_per_epoch", "seconds"]
#: study -> {point label: config overrides}; "ACMR" (no override) is the grid's own cell.
STUDIES = {
    "ablation": {
        "w/o market embedding": {"use_market_embedding": False},
        "w/o multi-market data": {"train_markets": "target", "finetune": False},
        "w/o fine-tuning": {"finetune": False},
    },
    "sensitivity": {  # the defaults once, then one parameter changed at a time
        "defaults": {},
        **{f"d={d}": {"embedding_size": d} for d in (8, 16, 64, 128)},
        **{f"SL={n}": {"max_history_len": n} for n in (30, 40, 60, 70)},
        **{f"L={n}": {"n_layers": n} for n in (1, 2, 3, 5)},
        **{f"H={n}": {"n_heads": n} for n in (1, 2, 4, 16)},
    },
}
#: The value of each sensitivity parameter in the "defaults" point (ACMR's yaml).
DEFAULTS = {"d": 32, "SL": 50, "L": 4, "H": 8}


def run_point(study, point, overrides, market, seed, out):
    """One ACMR run (an interrupted one continues from its last finished epoch); its final-phase rows with the
    epochs run, the mean seconds per pre-training epoch and the run's computing time."""
    config_dict = {**SETTINGS, **overrides, "seed": seed, "state": "WARNING", "eval_protocol": "market",
                   "checkpoint_dir": os.path.join(BENCH, "work", f"acmr_{study}")}
    resume = find_resumable_run(make_config("ACMR", market, None, config_dict), test_protocols=list(PROTOCOLS))
    if resume:
        print(f"  continuing the interrupted run {resume}", flush=True)
    path, rows = run("ACMR", market, config_dict=config_dict, test_protocols=list(PROTOCOLS), resume=resume)
    curves = read_csv_rows(os.path.join(path, "learning_curves.csv"))
    first = [r for r in curves if r["phase"] == curves[0]["phase"]]  # pre-training, or the one phase
    per_user = os.path.join(out, "per_user")
    os.makedirs(per_user, exist_ok=True)
    shutil.copy(os.path.join(path, "per_user_test.npz"), os.path.join(per_user, f"{slug(point)}-{market}-{seed}.npz"))
    final = rows[-1]["phase"]
    return [{"point": point, "market": market, "seed": str(seed), "protocol": r["protocol"], "split": r["split"],
             **{m: r[m] for m in METRICS}, "epochs": len(curves),
             "seconds_per_epoch": round(float(np.mean([float(r["train_seconds"]) for r in first])), 2),
             "seconds": run_seconds(path)} for r in rows if r["phase"] == final]


def slug(point):
    return "".join(c if c.isalnum() else "_" for c in point)


def per_user(out, point, market, seed, protocol):
    """(users, test NDCG@10) of a point, or of the grid's full ACMR cell for ``point`` ACMR; None if absent."""
    path = (os.path.join(os.path.dirname(out), "compare", "per_user", f"ACMR-cross-market-{market}-{seed}.npz")
            if point == "ACMR" else os.path.join(out, "per_user", f"{slug(point)}-{market}-{seed}.npz"))
    if not os.path.exists(path):
        return None
    data = np.load(path)
    return data["user_id"], data[f"{protocol}/ndcg@10"]


def summary(study, rows, out):
    """Test NDCG@10 per point and market (mean over seeds); ablations with Wilcoxon p against full ACMR."""
    grid = [r for r in read_csv_rows(os.path.join(os.path.dirname(out), "compare", "results.csv"))
            if r["label"] == "ACMR" and r["split"] == "test"]
    seeds = sorted({r["seed"] for r in rows})
    markets = list(dict.fromkeys(r["market"] for r in rows))
    values = defaultdict(list)
    for r in rows + [{**g, "point": "ACMR"} for g in grid if g["seed"] in seeds and g["market"] in markets]:
        if r["split"] == "test":
            values[(r["point"], r["market"], r["protocol"])].append(float(r["ndcg@10"]))
    points = ["ACMR", *STUDIES[study]] if study == "ablation" else list(STUDIES[study])
    per_seed = defaultdict(dict)
    for r in rows:
        per_seed[(r["point"], r["market"])][r["seed"]] = float(r["seconds_per_epoch"])
    timing = {key: float(np.mean(list(by_seed.values()))) for key, by_seed in per_seed.items()}
    lines = [f"# ACMR {study}: test NDCG@10\n",
             f"Seeds {', '.join(seeds)}; each point is one ACMR run with the grid's settings and the change named"
             + ("; ACMR is the comparison grid's cell. p: Wilcoxon signed-rank over users (pooled over seeds) "
                "against ACMR." if study == "ablation" else "; s/epoch: mean training seconds per pre-training "
                "epoch on this machine.") + "\n"]
    for protocol in PROTOCOLS:
        lines += [f"## `{protocol}` protocol\n", "| point | " + " | ".join(m.upper() for m in markets) + " |",
                  "|---|" + "---|" * len(markets)]
        for point in points:
            cells = []
            for m in markets:
                v = values.get((point, m, protocol))
                text = f"{np.mean(v):.4f}" if v else ""
                if v and study == "ablation" and point != "ACMR":
                    p = wilcoxon(out, point, m, seeds, protocol)
                    text += f" (p {p:.2g})" if p is not None else ""
                if v and study == "sensitivity":
                    text += f" ({timing[(point, m)]:.0f} s/epoch)"
                cells.append(text)
            lines.append(f"| {point} | " + " | ".join(cells) + " |")
        lines.append("")
    write_text(os.path.join(out, "summary.md"), "\n".join(lines))
    plot(study, points, markets, values, timing, os.path.join(out, "plot.png"))
    return "\n".join(lines)


def wilcoxon(out, point, market, seeds, protocol):
    a, b = [], []
    for seed in seeds:
        mine, full = per_user(out, point, market, seed, protocol), per_user(out, "ACMR", market, seed, protocol)
        if mine is not None and full is not None and np.array_equal(mine[0], full[0]):
            a.append(mine[1])
            b.append(full[1])
    if not a or np.allclose(np.concatenate(a), np.concatenate(b)):
        return None
    return float(stats.wilcoxon(np.concatenate(a), np.concatenate(b)).pvalue)


def plot(study, points, markets, values, timing, path):
    """Ablation: one panel per protocol, markets on x, a marker per point. Sensitivity: one panel per
    parameter, its values on x, NDCG@10 (market and paper) and seconds per epoch on a second axis."""
    if study == "ablation":
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, protocol in zip(axes, ("market", "paper")):
            for k, point in enumerate(points):
                xs = [i + (k - len(points) / 2) * 0.12 for i, m in enumerate(markets) if (point, m, protocol) in values]
                ys = [np.mean(values[(point, m, protocol)]) for m in markets if (point, m, protocol) in values]
                ax.plot(xs, ys, "o" if point == "ACMR" else "s", markersize=7, label=point)
            ax.set_xticks(range(len(markets)), [m.upper() for m in markets])
            ax.set_xlim(-0.6, len(markets) - 0.4)  # a market's points stay beside its tick
            ax.set_title(f"test NDCG@10, `{protocol}` protocol", fontsize=10)
            ax.grid(axis="y", alpha=0.3)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=len(points), fontsize=8)  # below, over no point
        fig.tight_layout(rect=(0, 0.07, 1, 1))
    else:
        market = markets[0]
        fig, axes = plt.subplots(1, len(DEFAULTS), figsize=(4 * len(DEFAULTS), 3.8), squeeze=False)
        for ax, (name, default) in zip(axes[0], DEFAULTS.items()):
            group = sorted([p for p in points if p.startswith(f"{name}=")] + ["defaults"],
                           key=lambda p: default if p == "defaults" else int(p.split("=")[1]))
            done = [p for p in group if (p, market, "market") in values]
            xs = [default if p == "defaults" else int(p.split("=")[1]) for p in done]
            for protocol, style in (("market", "o-"), ("paper", "s--")):
                ax.plot(xs, [np.mean(values[(p, market, protocol)]) for p in done], style, label=protocol)
            seconds = ax.twinx()
            seconds.plot(xs, [timing[(p, market)] for p in done], "^:", color="gray", label="s/epoch (right)")
            seconds.set_ylabel("seconds per pre-training epoch", fontsize=8, color="gray")
            if name in ("d", "H"):  # powers of two
                ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.set_xlabel(f"{name} (others at their defaults)")
            ax.set_ylabel("test NDCG@10")
            ax.set_title(f"{market.upper()}: {name}", fontsize=10)
            handles = ax.get_legend_handles_labels()[0] + seconds.get_legend_handles_labels()[0]
            ax.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="lower right")
        fig.tight_layout()
    write_atomically(path, lambda f: fig.savefig(f, dpi=100, format="png"), mode="wb")
    plt.close(fig)


def point_list(text, study):
    """The ``--points`` of ``study``, each checked against its known labels."""
    points = name_list(text, "--points")
    unknown = [p for p in points if p not in STUDIES[study]]
    if unknown:
        raise CrossMarketError(f"--points: unknown {study} point(s) {', '.join(map(repr, unknown))}; the points are: "
                               + ", ".join(STUDIES[study]))
    return points


def main(argv=None):
    """The command; a bad argument is one ``error:`` line and exit code 2, Ctrl-C one line and 130 (the same command
    continues: finished points are kept, an unfinished one goes on from its last finished epoch)."""
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=sorted(STUDIES))
    parser.add_argument("--markets", default=None, help="default: all seven (ablation), DE (sensitivity)")
    parser.add_argument("--seeds", default="2020")
    parser.add_argument("--points", default=None, help="comma list of point labels (default: every one)")
    parser.add_argument("--results", default=os.path.join(BENCH, "results"),
                        help="results folder; full ACMR is read from its compare/ grid")
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # RecBole's Config reads the command line too
    return bench_command(_main, args, "continues from the finished points")


def _main(args):
    points = point_list(args.points, args.study) if args.points is not None else list(STUDIES[args.study])
    seeds = int_list(args.seeds, "--seeds")
    default_markets = "IN,JP,DE,FR,MX,UK,CA" if args.study == "ablation" else "DE"
    markets = market_list(default_markets if args.markets is None else args.markets)
    out = os.path.join(args.results, f"acmr_{args.study}")
    os.makedirs(out, exist_ok=True)
    results = os.path.join(out, "results.csv")
    rows = read_csv_rows(results)
    for market in markets:
        for seed in seeds:
            for point in points:
                if any((r["point"], r["market"], r["seed"]) == (point, market, str(seed)) for r in rows):
                    continue
                print(f"ACMR {point} on {market.upper()}, seed {seed}", flush=True)
                rows += run_point(args.study, point, STUDIES[args.study][point], market, seed, out)
                write_csv_rows(results, rows, FIELDS)
                print(summary(args.study, rows, out), flush=True)
    if rows:
        print(summary(args.study, rows, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
