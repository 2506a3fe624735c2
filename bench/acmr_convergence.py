"""ACMR's convergence: valid NDCG@5 per pre-training and fine-tuning epoch, per market, from the grid's runs.

    python bench/acmr_convergence.py [--markets IN,JP,DE,CA]

Reads the ``learning_curves.csv`` of every ACMR run of the comparison grid (``bench/results/compare/runs/``;
ACMR there pre-trains with the same early stopping as every model, at most 50 epochs, patience 5), copies
them to ``bench/results/acmr_convergence/<market>-seed<seed>.csv`` (committed, unlike the run folders, so
the curves of runs made in another checkout are kept) and draws from those copies ``curves.png`` (one panel
per market, one line per seed, the selected epoch marked) and ``summary.md`` (per run: epochs run and the
selected epoch of each phase, best valid NDCG@5), which says whether a lower pre-training cap would have lost
anything.
"""

import argparse
import glob
import json
import os
import shutil
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from recbole_cmr.utils import read_csv_rows, write_atomically, write_text  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markets", default="IN,JP,DE,CA")
    args = parser.parse_args(argv)
    markets = args.markets.lower().split(",")
    out = os.path.join(RESULTS, "acmr_convergence")
    os.makedirs(out, exist_ok=True)
    curves = {}
    for run in sorted(glob.glob(os.path.join(RESULTS, "compare", "runs", "ACMR-*"))):
        if run.endswith(".incomplete") or not os.path.exists(os.path.join(run, "learning_curves.csv")):
            continue
        config = json.load(open(os.path.join(run, "config.json")))
        if config["target_market"] not in markets:
            continue
        name = f"{config['target_market']}-seed{config['seed']}"
        shutil.copy(os.path.join(run, "learning_curves.csv"), os.path.join(out, f"{name}.csv"))
    for copy in sorted(glob.glob(os.path.join(out, "*-seed*.csv"))):
        market, seed = os.path.basename(copy)[:-len(".csv")].split("-seed")
        if market in markets:
            curves[(market, int(seed))] = read_csv_rows(copy)
    found = [m for m in markets if any(k[0] == m for k in curves)]
    if not found:
        print("no finished ACMR run of these markets in bench/results/compare/runs/ or its copies yet")
        return 1
    fig, axes = plt.subplots(1, len(found), figsize=(4.5 * len(found), 3.8), squeeze=False)
    lines = ["# ACMR convergence on the comparison grid's runs (valid NDCG@5, `market` protocol)\n",
             "| market | seed | pre-training epochs run | selected pre-training epoch | its valid NDCG@5 | "
             "fine-tuning epochs run | selected fine-tuning epoch | its valid NDCG@5 |",
             "|---|---|---|---|---|---|---|---|"]
    for ax, market in zip(axes[0], found):
        for (m, seed), rows in sorted(curves.items()):
            if m != market:
                continue
            cells = [market.upper(), str(seed)]
            for phase in ("pretrain", "finetune"):  # both in the table, pre-training plotted
                phase_rows = [r for r in rows if r["phase"] == phase and r.get("ndcg@5")]
                selected = next((r for r in phase_rows if r["selected"] == "True"), None)
                cells += [str(len(phase_rows)), str(int(selected["epoch"]) + 1) if selected else "",
                          f"{float(selected['ndcg@5']):.4f}" if selected else ""]
                if phase == "pretrain" and phase_rows:
                    ax.plot([int(r["epoch"]) + 1 for r in phase_rows], [float(r["ndcg@5"]) for r in phase_rows],
                            "-", marker="o", markersize=3, label=f"seed {seed}")
                    if selected:
                        ax.plot(int(selected["epoch"]) + 1, float(selected["ndcg@5"]), "k*", markersize=10)
            lines.append("| " + " | ".join(cells) + " |")
        ax.set_title(f"{market.upper()}: pre-training (star: selected epoch)", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("valid NDCG@5")
        ax.legend(fontsize=7)
    fig.tight_layout()
    write_atomically(os.path.join(out, "curves.png"), lambda f: fig.savefig(f, dpi=100, format="png"), mode="wb")
    write_text(os.path.join(out, "summary.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
