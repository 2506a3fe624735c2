"""Rerun committed grid cells in a scratch folder and compare every metric with the committed row.

    python bench/rerun_cells.py "Pop (single):in:2020" "M3Rec (our reconstruction):jp:2021"

A refactor must keep every committed number: this reruns the named cells (label:market:seed) of
``bench/results/compare/`` with the grid's own settings and prints committed against rerun for each
protocol and split; it exits 1 if any metric differs by more than 1e-4, and writes nothing under
``bench/results/``.
"""

import argparse
import os
import sys
import tempfile
import warnings

from compare_markets import SETTINGS

from recbole_cmr.compare import METRICS, run_cell
from recbole_cmr.utils import CrossMarketError, read_csv_rows

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "compare")


def main(argv=None):
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cells", nargs="+", help="label:market:seed, e.g. 'Pop (single):in:2020'")
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]
    committed = read_csv_rows(os.path.join(RESULTS, "results.csv"))
    worst = 0.0
    for text in args.cells:
        label, market, seed = text.rsplit(":", 2)
        rows = [r for r in committed if (r["label"], r["market"], r["seed"]) == (label, market.lower(), seed)]
        if not rows:
            raise CrossMarketError(f"no committed cell {text!r} in {RESULTS}/results.csv")
        cell = (label, rows[0]["model"], rows[0]["scope"], market.lower(), int(seed))
        tested = sorted({r["protocol"] for r in rows})
        with tempfile.TemporaryDirectory() as scratch:
            rerun = run_cell(cell, rows[0]["selected_on"], tested, None, {"dataset": "xmarket", **SETTINGS}, scratch,
                             os.path.join(scratch, "pretrained"))
        for old in rows:
            new = next(r for r in rerun if (r["protocol"], r["split"]) == (old["protocol"], old["split"]))
            gaps = {m: abs(float(old[m]) - float(new[m])) for m in METRICS}
            worst = max(worst, *gaps.values())
            print(f"{text} {old['protocol']:>6} {old['split']:>5}: committed "
                  + " ".join(f"{m} {float(old[m]):.4f}" for m in METRICS) + " | rerun "
                  + " ".join(f"{float(new[m]):.4f}" for m in METRICS), flush=True)
    print(f"largest difference: {worst:.2g}")
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
