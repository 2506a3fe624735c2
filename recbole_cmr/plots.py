"""Pictures a run writes into its directory."""

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from recbole_cmr.utils import write_atomically  # noqa: E402


def learning_curves(rows, path, title, selection_metric):
    """One panel per training phase: valid metrics per epoch (left axis), training loss (right axis), and the
    epoch the phase selected (dashed line)."""
    phases = list(dict.fromkeys(r["phase"] for r in rows))
    metrics = [k for k in dict.fromkeys(k for r in rows for k in r) if "@" in k]
    fig, axes = plt.subplots(1, len(phases), figsize=(5.5 * len(phases), 4), squeeze=False)
    for ax, phase in zip(axes[0], phases):
        phase_rows = [r for r in rows if r["phase"] == phase]
        epochs = [r["epoch"] + 1 for r in phase_rows]
        for metric in metrics:
            points = [(e, r[metric]) for e, r in zip(epochs, phase_rows) if metric in r]
            if points:
                style = {"linewidth": 2.5} if metric == selection_metric else {"linewidth": 1, "alpha": 0.8}
                ax.plot(*zip(*points), marker="o", markersize=3, label=f"valid {metric}", **style)
        selected = [e for e, r in zip(epochs, phase_rows) if r.get("selected")]
        if selected:
            last = selected[0] == epochs[-1] and len(epochs) > 1
            ax.axvline(selected[0], color="black", linestyle="--", linewidth=1)
            ax.annotate(f"selected: epoch {selected[0]}", (selected[0], 0.97), xycoords=("data", "axes fraction"),
                        xytext=(-4 if last else 4, 0), textcoords="offset points", fontsize=8, va="top",
                        ha="right" if last else "left")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("valid metric")
        ax.set_title(f"{phase}", fontsize=10)
        loss_axis = ax.twinx()
        loss_axis.plot(epochs, [r["train_loss"] for r in phase_rows], color="gray", linestyle=":", label="train loss")
        loss_axis.set_ylabel("train loss", color="gray")
    lines = axes[0][0].get_legend_handles_labels()
    loss_lines = loss_axis.get_legend_handles_labels()
    fig.legend(lines[0] + loss_lines[0], lines[1] + loss_lines[1], fontsize=8, loc="lower center",
               ncol=len(lines[0]) + 1, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    write_atomically(path, lambda f: fig.savefig(f, dpi=100, format="png"), mode="wb")
    plt.close(fig)


def comparison(rows, path, protocol, metric="ndcg@10", top=5):
    """A grid's test ``metric`` under ``protocol``: a models x markets heatmap of the seed means (coloured
    relative to each market's best, which is boxed), and per market the ``top`` models with their seed range."""
    test = [r for r in rows if r["split"] == "test" and r["protocol"] == protocol]
    markets = sorted({r["market"] for r in test})
    labels = list(dict.fromkeys(r["label"] for r in test))
    values = {(label, market): [float(r[metric]) for r in test if r["label"] == label and r["market"] == market]
              for label in labels for market in markets}
    means = np.array([[np.mean(values[label, m]) if values[label, m] else np.nan for m in markets] for label in labels])
    best = np.nanmax(means, axis=0)
    columns = 4
    dot_rows = -(-len(markets) // columns)
    heat_height = 0.32 * len(labels) + 0.8
    fig = plt.figure(figsize=(16, heat_height + 2.2 * dot_rows))
    grid = fig.add_gridspec(1 + dot_rows, columns, height_ratios=[heat_height] + [2.0] * dot_rows,
                            hspace=0.35, wspace=0.95)
    heat = fig.add_subplot(grid[0, :])
    heat.imshow(means / best, cmap="YlGn", vmin=0.5, vmax=1.1, aspect="auto")
    for i, label in enumerate(labels):
        for j, market in enumerate(markets):
            if np.isnan(means[i, j]):
                heat.text(j, i, "-", ha="center", va="center", fontsize=9, color="gray")
                continue
            n = len(values[label, market])
            text = f"{means[i, j]:.3f}" + (f" ({n})" if n > 1 else "")
            is_best = means[i, j] == best[j]
            heat.text(j, i, text, ha="center", va="center", fontsize=9, fontweight="bold" if is_best else "normal")
            if is_best:
                heat.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2))
    heat.set_xticks(range(len(markets)), [m.upper() for m in markets])
    heat.set_yticks(range(len(labels)), labels, fontsize=9)
    heat.xaxis.tick_top()
    heat.set_title(f"test {metric.upper()} under the {protocol} protocol: mean over seeds (seeds in brackets when "
                   "more than one); colour relative to the market's best, boxed", fontsize=9)
    for j, market in enumerate(markets):
        ax = fig.add_subplot(grid[1 + j // columns, j % columns])
        order = [i for i in np.argsort(-np.nan_to_num(means[:, j], nan=-1.0))[:top] if not np.isnan(means[i, j])]
        for y, i in enumerate(order):
            seeds = values[labels[i], market]
            ax.plot([min(seeds), max(seeds)], [y, y], color="gray", linewidth=2)
            ax.plot(means[i, j], y, "o", color="black" if y == 0 else "tab:blue")
        ax.set_yticks(range(len(order)), [labels[i] for i in order], fontsize=8)
        ax.set_ylim(len(order) - 0.5, -0.5)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
        ax.margins(x=0.12)
        ax.set_title(f"{market.upper()}: top {len(order)}", fontsize=9)
    fig.text(0.5, 0.02, f"top models per market: mean (dot) and range over seeds (line) of test {metric.upper()}",
             ha="center", fontsize=9)
    write_atomically(path, lambda f: fig.savefig(f, dpi=100, format="png", bbox_inches="tight"), mode="wb")
    plt.close(fig)


def item_map(embeddings, sold_in, market_names, path, title, seed, most=2000):
    """t-SNE of item embeddings (at most ``most`` items, seeded sample): an item sold in one market takes that
    market's colour, an item sold in several markets is grey."""
    from sklearn.manifold import TSNE

    items = np.array([i for i in range(1, len(sold_in)) if sold_in[i]])
    rng = np.random.default_rng(seed)
    if len(items) > most:
        items = np.sort(rng.choice(items, size=most, replace=False))
    points = TSNE(n_components=2, init="pca", random_state=seed,
                  perplexity=min(30.0, max(2.0, (len(items) - 1) / 3))).fit_transform(embeddings[items])
    fig, ax = plt.subplots(figsize=(8, 7))
    shared = np.array([len(sold_in[i]) > 1 for i in items])
    ax.scatter(*points[shared].T, s=5, color="lightgray", label=f"several markets ({shared.sum()})")
    colours = plt.get_cmap("tab10")
    for k, market in enumerate(sorted({m for i in items[~shared] for m in sold_in[i]})):
        mask = np.array([not s and market in sold_in[i] for i, s in zip(items, shared)])
        ax.scatter(*points[mask].T, s=8, color=colours(k % 10), label=f"only {market_names[market]} ({mask.sum()})")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8, markerscale=2, loc="best")
    ax.set_title(f"{title}\n{len(items)} items" + (f" (a seeded sample of {most})" if len(sold_in) - 1 > most else ""),
                 fontsize=10)
    fig.tight_layout()
    write_atomically(path, lambda f: fig.savefig(f, dpi=100, format="png"), mode="wb")
    plt.close(fig)


def attention_heatmap(weights, candidate_labels, history_labels, path, title):
    """Attention from each candidate (rows) to the history items (columns), values printed."""
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(history_labels) + 3.5), 0.5 * len(candidate_labels) + 2.2))
    image = ax.imshow(weights, cmap="Blues", vmin=0, aspect="auto")
    for (r, c), value in np.ndenumerate(weights):
        ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=7,
                color="white" if value > 0.6 * weights.max() else "black")
    ax.set_xticks(range(len(history_labels)), history_labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(candidate_labels)), candidate_labels, fontsize=8)
    ax.set_xlabel("the user's history items (training data)")
    ax.set_ylabel("candidate: predicted probability")
    fig.colorbar(image, ax=ax, fraction=0.03, label="attention (mean over heads)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    write_atomically(path, lambda f: fig.savefig(f, dpi=100, format="png"), mode="wb")
    plt.close(fig)


def feature_gain(names, gains, path, title):
    """Horizontal bars: a ranking model's total gain per feature, largest on top."""
    order = np.argsort(gains)
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.5))
    ax.barh([names[k] for k in order], np.asarray(gains)[order] / max(float(np.sum(gains)), 1e-12), color="tab:blue")
    ax.set_xlabel("share of the total gain (LightGBM)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    write_atomically(path, lambda f: fig.savefig(f, dpi=100, format="png"), mode="wb")
    plt.close(fig)
