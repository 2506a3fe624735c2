"""Compare models on one split: a resumable grid, a markdown table, a plot and paired significance tests.

    python run_recbole_cmr.py --compare --models ACMR,Pop,EASE --markets IN,JP --seeds 1,2,3 --protocol market

Built-in models run in each requested scope (``single``: target market only,
``++``: all markets); two-phase models (ACMR) are cross-market by design and run
once. Every cell is one ``quick_start.run`` with test metrics under one
protocol; finished cells are read back from ``results.csv``, so an interrupted
grid resumes where it stopped.
"""

import os
import shutil

import numpy as np
from scipy import stats

from recbole_cmr.data.dataset import create_dataset
from recbole_cmr.quick_start import make_config, run
from recbole_cmr.utils import CrossMarketError, read_csv_rows, write_csv_rows

SCOPES = {"single": "target", "++": "all"}
METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")
FIELDS = ["label", "model", "scope", "market", "seed", "protocol", "split", *METRICS, "mrr@10"]


def plan(models, markets, seeds, protocol, scopes, config_dict):
    """Validate the whole grid before running anything; returns the cells in order."""
    for scope in scopes:
        if scope not in SCOPES:
            raise CrossMarketError(f"unknown scope {scope!r}; use single (target market only) or ++ (all markets)")
    cells = []
    for model in models:
        config = make_config(model, markets[0], config_dict={**config_dict, "eval_protocol": protocol})
        two_phase = bool(config["finetune"])
        for scope in (["cross-market"] if two_phase else scopes):
            for market in markets:
                for seed in seeds:
                    label = model if two_phase else f"{model} ({scope})"
                    cells.append((label, model, scope, market, seed))
    dataset = create_dataset(make_config(models[0], markets[0], config_dict={**config_dict, "state": "WARNING"}))
    for market in markets:
        dataset.market_id(market)  # unknown markets list the known ones
    return cells


def run_cell(cell, protocol, config_dict, out_dir):
    label, model, scope, market, seed = cell
    cell_dict = {**config_dict, "eval_protocol": protocol, "seed": int(seed), "state": "WARNING",
                 "checkpoint_dir": os.path.join(out_dir, "runs")}
    if scope in SCOPES:
        cell_dict["train_markets"] = SCOPES[scope]
    path, rows = run(model, market, config_dict=cell_dict)
    per_user_dir = os.path.join(out_dir, "per_user")
    os.makedirs(per_user_dir, exist_ok=True)
    shutil.copy(os.path.join(path, "per_user_test.npz"), os.path.join(per_user_dir, _cell_name(cell) + ".npz"))
    final = rows[-1]["phase"]
    return [{"label": label, "model": model, "scope": scope, "market": market.lower(), "seed": seed,
             "protocol": protocol, "split": r["split"], **{m: r[m] for m in (*METRICS, "mrr@10")}}
            for r in rows if r["phase"] == final]


def _cell_name(cell):
    label, model, scope, market, seed = cell
    return f"{model}-{scope.replace('+', 'p')}-{market.lower()}-{seed}"


def paired_test(out_dir, cells, a_label, b_label, market, metric="ndcg@10"):
    """Wilcoxon signed-rank test over (seed, user) pairs of two labels' per-user test values."""
    def load(label, seed):
        cell = next(c for c in cells if c[0] == label and c[3].lower() == market and c[4] == seed)
        path = os.path.join(out_dir, "per_user", _cell_name(cell) + ".npz")
        if not os.path.exists(path):
            return None
        data = np.load(path)
        return data[next(k for k in data.files if k.endswith("/" + metric))]

    values = {a_label: [], b_label: []}
    for seed in sorted({c[4] for c in cells}):
        pair = load(a_label, seed), load(b_label, seed)
        if pair[0] is not None and pair[1] is not None:  # only seeds both have finished
            values[a_label].append(pair[0])
            values[b_label].append(pair[1])
    if not values[a_label]:
        return None
    a, b = np.concatenate(values[a_label]), np.concatenate(values[b_label])
    if len(a) != len(b) or len(a) == 0 or np.allclose(a, b):
        return None
    return float(stats.wilcoxon(a, b).pvalue)


def markdown(rows, cells, out_dir, protocol, seeds):
    test = [r for r in rows if r["split"] == "test"]
    markets = sorted({r["market"] for r in test})
    labels = list(dict.fromkeys(r["label"] for r in test))
    out = [f"# Comparison: test metrics, protocol `{protocol}`, seeds {', '.join(map(str, seeds))}\n",
           "Mean ± std over seeds; the best mean per column is bold. Selection on valid only.\n"]
    for metric in METRICS:
        out.append(f"\n## {metric} (protocol `{protocol}`)\n")
        out.append("| model | " + " | ".join(m.upper() for m in markets) + " |")
        out.append("|---|" + "---|" * len(markets))
        means = {(l, m): [float(r[metric]) for r in test if r["label"] == l and r["market"] == m]
                 for l in labels for m in markets}
        best = {m: max((np.mean(v) for (l, mk), v in means.items() if mk == m and v), default=None) for m in markets}
        for label in labels:
            cells_md = []
            for m in markets:
                v = means[(label, m)]
                if not v:
                    cells_md.append("")
                    continue
                text = f"{np.mean(v):.4f} ± {np.std(v):.4f}" if len(v) > 1 else f"{np.mean(v):.4f}"
                cells_md.append(f"**{text}**" if np.isclose(np.mean(v), best[m]) else text)
            out.append(f"| {label} | " + " | ".join(cells_md) + " |")
    if "ACMR" in labels and len(labels) > 1:
        out.append("\n## ACMR vs the best other model (per-user test NDCG@10, Wilcoxon signed-rank, paired by seed and user)\n")
        out.append("| market | best other model | its NDCG@10 | ACMR NDCG@10 | p-value |\n|---|---|---|---|---|")
        for m in markets:
            scores = {l: np.mean([float(r["ndcg@10"]) for r in test if r["label"] == l and r["market"] == m] or [np.nan])
                      for l in labels}
            others = {l: s for l, s in scores.items() if l != "ACMR" and not np.isnan(s)}
            if not others or np.isnan(scores["ACMR"]):
                continue
            rival = max(others, key=others.get)
            p = paired_test(out_dir, cells, "ACMR", rival, m)
            out.append(f"| {m.upper()} | {rival} | {others[rival]:.4f} | {scores['ACMR']:.4f} | "
                       f"{'n/a' if p is None else f'{p:.2g}'} |")
    return "\n".join(out) + "\n"


def plot(rows, path, protocol):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test = [r for r in rows if r["split"] == "test"]
    markets = sorted({r["market"] for r in test})
    labels = list(dict.fromkeys(r["label"] for r in test))
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.5), sharey=False)
    width = 0.8 / max(len(labels), 1)
    for ax, metric in zip(axes, METRICS):
        for i, label in enumerate(labels):
            values = [[float(r[metric]) for r in test if r["label"] == label and r["market"] == m] for m in markets]
            ax.bar(np.arange(len(markets)) + i * width, [np.mean(v) if v else 0 for v in values], width,
                   yerr=[np.std(v) if v else 0 for v in values], label=label)
        ax.set_xticks(np.arange(len(markets)) + width * (len(labels) - 1) / 2, [m.upper() for m in markets])
        ax.set_title(f"{metric} ({protocol})")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def compare(models, markets, seeds, protocol="market", scopes=("single", "++"), out_dir=None, config_dict=None):
    """Run (or resume) the grid; returns the output directory."""
    config_dict = dict(config_dict or {})
    cells = plan(models, markets, seeds, protocol, list(scopes), config_dict)
    out_dir = os.path.abspath(out_dir or os.path.join("saved", f"compare-{protocol}"))
    os.makedirs(out_dir, exist_ok=True)
    results = os.path.join(out_dir, "results.csv")
    rows = read_csv_rows(results)
    if rows and any(r["protocol"] != protocol for r in rows):
        raise CrossMarketError(f"{results} holds another protocol's results; choose another --out")
    done = {(r["label"], r["market"], str(r["seed"])) for r in rows}
    for cell in cells:
        if (cell[0], cell[3].lower(), str(cell[4])) in done:
            continue
        print(f"running {cell[0]} on {cell[3].upper()} seed {cell[4]} ({protocol})", flush=True)
        rows += run_cell(cell, protocol, config_dict, out_dir)
        write_csv_rows(results, rows, FIELDS)
        with open(os.path.join(out_dir, "table.md"), "w") as f:
            f.write(markdown(rows, cells, out_dir, protocol, seeds))
        plot(rows, os.path.join(out_dir, "plot.png"), protocol)
    return out_dir
