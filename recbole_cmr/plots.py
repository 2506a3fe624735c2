"""Pictures a run writes into its directory."""

import matplotlib

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
