"""Build the cross-market atomic file from XMarket ``<market>_5core.txt`` files or from your own CSV.

Usage::

    python -m recbole_cmr.data.convert SRC_DIR [--out atomic_data] [--dataset xmarket]
    python -m recbole_cmr.data.convert --csv FILE --user COL --item COL --market COL [--time COL]
        [--rating COL] [--sep ,] [--out atomic_data] [--dataset NAME]

Each XMarket file is ``userId itemId rate date`` (space separated, with header).
A CSV has a header naming its columns; times are numbers (seconds since 1970) or dates,
ratings numbers (without ``--rating`` every row is rated 1; without ``--time`` every
row has time 0, so ``split_order: time`` would order a user's items at random).
Market names are lower-cased and stripped (the report lists each renamed value).
Users are per market, so a user token is ``<market>_<user>``; item ids are kept as
they are, so the same item is one token in every market.  Duplicate (user, item) rows of a market collapse into one
interaction: the earliest dated row is kept, and the report says how many collapsed.
The output is written to a temporary file and renamed into place, so a failed run
never leaves a half-written atomic file.
"""

import argparse
import csv
import os
import re
import sys

import pandas as pd

from recbole_cmr.utils import write_atomically

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


def read_csv(path, user, item, market, time=None, rating=None, sep=","):
    """Interactions of a CSV file in atomic-file column order, duplicates collapsed; bad rows name their line."""
    if not os.path.isfile(path):
        raise ConversionError(f"CSV file {path!r} does not exist")
    if len(sep) != 1:
        raise ConversionError(f"--sep must be one character, got {sep!r} (a tab: --sep $'\\t')")
    check_row_widths(path, sep)
    try:
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ConversionError(f"{path}: cannot be read as a CSV with separator {sep!r} "
                              f"({' '.join(str(err).split())})") from None
    columns = {"--user": user, "--item": item, "--market": market, "--time": time, "--rating": rating}
    missing = [f"{flag} {name!r}" for flag, name in columns.items() if name is not None and name not in frame]
    if missing:
        raise ConversionError(f"{path}: no column {', '.join(missing)}; the header has {list(frame.columns)}")
    frame = frame[~(frame.apply(lambda column: column.str.strip()) == "").all(axis=1)]  # blank lines; index = line - 2
    if frame.empty:
        raise ConversionError(f"{path} has a header but no rows")
    text = {flag: frame[name].str.strip() for flag, name in columns.items() if name is not None}
    times = pd.Series(0, index=frame.index, dtype="int64")
    bad = pd.concat([values == "" for values in text.values()], axis=1).any(axis=1)
    if time is not None:
        numbers = pd.to_numeric(text["--time"], errors="coerce")
        dates = pd.to_datetime(text["--time"].where(numbers.isna()), errors="coerce", format="mixed")
        times = numbers.fillna((dates - pd.Timestamp("1970-01-01")) // pd.Timedelta(seconds=1))
        bad |= times.isna()
    ratings = pd.Series(1.0, index=frame.index)
    if rating is not None:
        ratings = pd.to_numeric(text["--rating"], errors="coerce")
        bad |= ratings.isna()
    if bad.any():
        first = bad.index[bad.to_numpy()][0]
        raise ConversionError(
            f"{path}: line {first + 2} is malformed ({int(bad.sum())} bad row(s)): {frame.loc[first].to_dict()}; "
            "each row needs a user, an item and a market" + (", a number or date as time" if time else "")
            + (", a numeric rating" if rating else "") + ": fix or remove such rows"
        )
    broken = pd.concat([text[flag].str.contains(r"[\t\r\n]") for flag in ("--user", "--item", "--market")],
                       axis=1).any(axis=1)
    if broken.any():
        first = broken.index[broken.to_numpy()][0]
        raise ConversionError(f"{path}: line {first + 2} has a tab or line break inside a user, item or market "
                              f"({int(broken.sum())} such row(s)): {frame.loc[first].to_dict()}; atomic files are "
                              "tab separated: remove them from the values")
    markets = text["--market"].str.lower()
    renamed = {raw: name for raw, name in zip(frame[market], markets) if raw != name}
    out = pd.DataFrame({"user_id": markets + "_" + text["--user"], "item_id": text["--item"],
                        "rating": ratings.astype(float), "timestamp": times.astype("int64"), "market": markets})
    out = out.sort_values(["user_id", "timestamp"], kind="stable")
    return out.drop_duplicates(["user_id", "item_id"], keep="first"), len(out), renamed


def check_row_widths(path, sep):
    """Every non-blank row has as many fields as the header (pandas would shift or cut the others silently)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = csv.reader(f, delimiter=sep)
            width = len(next(rows, []))
            for row in rows:
                if row and any(v.strip() for v in row) and len(row) != width:
                    raise ConversionError(
                        f"{path}: line {rows.line_num} has {len(row)} field(s), the header has {width}: {row}; "
                        f"fix the row (a {sep!r} inside a value needs quotes)")
    except (UnicodeDecodeError, csv.Error) as err:
        raise ConversionError(f"{path}: cannot be read as a UTF-8 CSV with separator {sep!r} "
                              f"({' '.join(str(err).split())})") from None


def write_atomic(inter, out_dir, dataset):
    """Write ``out_dir/<dataset>/<dataset>.inter`` whole or not at all; returns its path."""
    target_dir = os.path.join(out_dir, dataset)
    os.makedirs(target_dir, exist_ok=True)
    target = os.path.join(target_dir, f"{dataset}.inter")

    def write(f):
        f.write("\t".join(ATOMIC_HEADER) + "\n")
        inter.to_csv(f, sep="\t", header=False, index=False, float_format="%.1f")

    write_atomically(target, write)
    return target


def convert(src_dir, out_dir, dataset="xmarket"):
    """Write ``out_dir/<dataset>/<dataset>.inter`` from XMarket files and return the combined frame."""
    frames = [read_market(m, p) for m, p in find_market_files(src_dir).items()]
    inter = pd.concat(frames, ignore_index=True)
    write_atomic(inter, out_dir, dataset)
    return inter


def market_counts(inter):
    """Per-market users, items and interactions of an interaction frame."""
    return inter.groupby("market").agg(
        users=("user_id", "nunique"), items=("item_id", "nunique"), interactions=("item_id", "size")
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", nargs="?", help="folder holding <market>_5core.txt files")
    parser.add_argument("--csv", help="a CSV file of interactions instead (with --user, --item, --market)")
    for column in ("user", "item", "market", "time", "rating"):
        parser.add_argument(f"--{column}", help=f"CSV: the column holding the {column}")
    parser.add_argument("--sep", default=",", help="CSV: the field separator (default ,)")
    parser.add_argument("--out", default="atomic_data", help="atomic data root (default: atomic_data)")
    parser.add_argument("--dataset", default="xmarket", help="dataset name (default: xmarket)")
    args = parser.parse_args(argv)
    try:
        if (args.src is None) == (args.csv is None):
            raise ConversionError("give either a folder of <market>_5core.txt files or --csv FILE")
        if args.csv is not None:
            needed = [f"--{c}" for c in ("user", "item", "market") if getattr(args, c) is None]
            if needed:
                raise ConversionError(f"--csv needs {', '.join(needed)}: the columns holding them")
            inter, rows, renamed = read_csv(args.csv, args.user, args.item, args.market, args.time, args.rating,
                                            args.sep)
            write_atomic(inter, args.out, args.dataset)
            if renamed:
                print("market names lower-cased and stripped: "
                      + ", ".join(f"{raw!r} -> {name!r}" for raw, name in sorted(renamed.items())))
            print(f"{rows - len(inter)} repeated (user, item) row(s) collapsed into their earliest")
        else:
            inter = convert(args.src, args.out, args.dataset)
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(market_counts(inter).to_string())
    print(f"wrote {os.path.join(args.out, args.dataset, args.dataset + '.inter')}: {len(inter)} interactions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
