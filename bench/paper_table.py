"""The ACMR paper's Table 3 (test NDCG@10) beside ours under its protocol and under `market`.

    python bench/paper_table.py

Reads ``bench/results/compare/results.csv`` (our mean over the seeds run) and writes
``bench/results/paper_vs_ours.md``: per model and market, the paper's N@10 (copied from its Table 3,
mean of five random splits), ours under `paper` (99 negatives from all markets' items, as the paper)
and ours under `market`. An empty cell is a grid cell not run yet.
"""

import os
import sys
from collections import defaultdict

import numpy as np

from recbole_cmr.utils import read_csv_rows, write_text

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
MARKETS = ("de", "jp", "in", "fr", "ca", "mx", "uk")  # the paper's column order
#: Table 3 of the paper, NDCG@10 per market in MARKETS order; keys are our grid's labels.
PAPER_NDCG10 = {
    "NeuMF (single)": (0.3404, 0.2271, 0.3675, 0.3189, 0.3540, 0.5358, 0.4113),
    "WideDeep (single)": (0.3603, 0.2861, 0.3751, 0.3250, 0.3843, 0.5567, 0.4381),
    "BERT4Rec (single)": (0.3494, 0.2297, 0.3868, 0.3029, 0.3456, 0.5337, 0.4167),
    "NeuMF (++)": (0.4325, 0.3312, 0.3705, 0.4416, 0.3182, 0.5945, 0.4658),
    "WideDeep (++)": (0.4456, 0.3268, 0.3896, 0.4543, 0.3119, 0.5934, 0.4721),
    "BERT4Rec (++)": (0.3900, 0.3031, 0.3121, 0.4034, 0.2761, 0.5868, 0.4191),
    "CoNet": (0.4279, 0.3375, 0.5130, 0.3984, 0.3380, 0.6472, 0.4628),
    "DDTCDR": (0.5023, 0.4160, 0.5767, 0.4763, 0.3988, 0.6868, 0.4610),
    "MMoE": (0.4889, 0.3654, 0.5083, 0.4738, 0.3721, 0.6662, 0.4993),
    "CrossStitch": (0.4628, 0.3492, 0.4844, 0.4678, 0.4225, 0.6711, 0.4988),
    "FOREC": (0.5233, 0.4510, 0.5983, 0.5238, 0.3986, 0.6759, 0.5306),
    "M3Rec (our reconstruction)": (0.5278, 0.2553, 0.4489, 0.5518, 0.3419, 0.6976, 0.5118),
    "ACMR": (0.5462, 0.5243, 0.6345, 0.5622, 0.4310, 0.7198, 0.5546),
}


def main():
    rows = [r for r in read_csv_rows(os.path.join(RESULTS, "compare", "results.csv")) if r["split"] == "test"]
    ours = defaultdict(list)
    for r in rows:
        ours[(r["label"], r["market"], r["protocol"])].append(float(r["ndcg@10"]))
    labels = list(PAPER_NDCG10) + sorted({r["label"] for r in rows} - set(PAPER_NDCG10))

    def cell(label, market, protocol):
        values = ours.get((label, market, protocol))
        return f"{np.mean(values):.4f}" if values else ""

    lines = ["# Test NDCG@10: the ACMR paper's Table 3 beside ours\n",
             "Per market: the paper's value (its protocol, mean of five random splits) / ours under the paper's "
             "protocol / ours under `market` (mean over the seeds our grid ran; `bench/results/compare/`). "
             "Models the paper did not run have no first value; an empty value of ours is not run yet.\n",
             "| model | " + " | ".join(m.upper() for m in MARKETS) + " |", "|---|" + "---|" * len(MARKETS)]
    for label in labels:
        paper = PAPER_NDCG10.get(label)
        cells = [f"{paper[i]:.4f}" if paper else "" for i in range(len(MARKETS))]
        cells = [f"{p} / {cell(label, m, 'paper')} / {cell(label, m, 'market')}" for p, m in zip(cells, MARKETS)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    path = os.path.join(RESULTS, "paper_vs_ours.md")
    write_text(path, "\n".join(lines) + "\n")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
