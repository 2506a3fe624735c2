"""Rebuild the cross-market atomic file from XMarket ``<market>_5core.txt`` files.

Usage::

    python -m recbole_cmr.data.convert SRC_DIR [--out atomic_data] [--dataset xmarket]

Each source file is ``userId itemId rate date`` (space separated, with header).
Users are per market, so a user token is ``<market>_<userId>``; item ids are kept
as they are, so the same item is one token in every market.  Duplicate
(user, item) rows of a market collapse into one interaction: the earliest dated
row is kept.  The output is written to a temporary file and renamed into place,
so a failed run never leaves a half-written atomic file.
"""

import argparse
import os
import re
import sys

import pandas as pd

ATOMIC_HEADER = ["user_id:token", "item_id:token", "rating:float", "timestamp:float", "market:token"]
SOURCE_COLUMNS = ["userId", "itemId", "rate", "date"]
SOURCE_PATTERN = re.compile(r"^([a-z]{2,})_5core\.txt$")


class ConversionError(ValueError):
    """A source folder or file that cannot be converted."""


def find_market_files(src_dir):
    """Return ``{market: path}`` for every ``<market>_5core.txt`` in ``src_dir``."""
    if not os.path.isdir(src_dir):
        raise ConversionError(f"source folder {src_dir!r} does not exist")
    files = {}
    for name in sorted(os.listdir(src_dir)):
        match = SOURCE_PATTERN.match(name.lower())
        if match:
            files[match.group(1)] = os.path.join(src_dir, name)
    if not files:
        raise ConversionError(
            f"no '<market>_5core.txt' file in {src_dir!r}; expected files such as 'in_5core.txt' "
            "with the header 'userId itemId rate date'"
        )
    return files


def read_market(market, path):
    """One market's interactions as a frame in atomic-file column order, duplicates collapsed."""
    frame = pd.read_csv(path, sep=r"\s+", dtype={"userId": str, "itemId": str})
    missing = [c for c in SOURCE_COLUMNS if c not in frame.columns]
    if missing:
        raise ConversionError(
            f"{path}: missing column(s) {missing}; the header must be 'userId itemId rate date'"
        )
    dates = pd.to_datetime(frame["date"], format="%Y-%m-%d", errors="coerce")
    ratings = pd.to_numeric(frame["rate"], errors="coerce")
    bad = frame.index[dates.isna() | ratings.isna() | frame["userId"].isna() | frame["itemId"].isna()]
    if len(bad):
        line = int(bad[0]) + 2  # header is line 1
        raise ConversionError(
            f"{path}: line {line} is malformed ({len(bad)} bad row(s)); each row needs "
            "userId, itemId, a numeric rate and a YYYY-MM-DD date"
        )
    out = pd.DataFrame(
        {
            "user_id": market + "_" + frame["userId"],
            "item_id": frame["itemId"],
            "rating": ratings,
            "timestamp": (dates - pd.Timestamp("1970-01-01")) // pd.Timedelta(seconds=1),
            "market": market,
        }
    )
    out = out.sort_values(["user_id", "timestamp"], kind="stable")
    return out.drop_duplicates(["user_id", "item_id"], keep="first")


def convert(src_dir, out_dir, dataset="xmarket"):
    """Write ``out_dir/<dataset>/<dataset>.inter`` and return the combined frame."""
    frames = [read_market(m, p) for m, p in find_market_files(src_dir).items()]
    inter = pd.concat(frames, ignore_index=True)
    target_dir = os.path.join(out_dir, dataset)
    os.makedirs(target_dir, exist_ok=True)
    target = os.path.join(target_dir, f"{dataset}.inter")
    tmp = target + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\t".join(ATOMIC_HEADER) + "\n")
        inter.to_csv(f, sep="\t", header=False, index=False, float_format="%.1f")
    os.replace(tmp, target)
    return inter


def market_counts(inter):
    """Per-market users, items and interactions of an interaction frame."""
    return inter.groupby("market").agg(
        users=("user_id", "nunique"), items=("item_id", "nunique"), interactions=("item_id", "size")
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="folder holding <market>_5core.txt files")
    parser.add_argument("--out", default="atomic_data", help="atomic data root (default: atomic_data)")
    parser.add_argument("--dataset", default="xmarket", help="dataset name (default: xmarket)")
    args = parser.parse_args(argv)
    try:
        inter = convert(args.src, args.out, args.dataset)
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(market_counts(inter).to_string())
    print(f"wrote {os.path.join(args.out, args.dataset, args.dataset + '.inter')}: {len(inter)} interactions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
