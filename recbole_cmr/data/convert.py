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
Values are written exactly: a rating as the shortest text of its float (``5`` and ``5.0`` as ``5.0``, ``2.25`` as
``2.25``; one with more digits than a float holds stops the run), a time as its exact number of seconds (a
whole number, or ``1700000000.25`` for ``2023-11-14 22:13:20.25``; a date with an offset counts from UTC).
Users are per market, so a user token is ``<market>_<user>``; item ids are kept as
they are, so the same item is one token in every market.  Duplicate (user, item) rows of a market collapse into one
interaction: the earliest dated row is kept, and the report says how many collapsed.
The output is written to a temporary file and renamed into place, so a failed or
interrupted run never leaves a half-written atomic file (nor the folders it made for it).
Bad input (a flag or a file) stops it with one ``error:`` line and exit status 2; Ctrl-C with one line and 130.
"""

import argparse
import csv
import os
import re
import signal
import sys
from contextlib import suppress
from decimal import Context, Decimal

try:  # pandas and torch (via recbole_cmr.utils) take a second or two: Ctrl-C then is one line, not a traceback
    import numpy as np
    import pandas as pd

    from recbole_cmr.utils import interrupt_line, io_error_line, raise_terminated, write_atomically
except KeyboardInterrupt:
    if __name__ != "__main__":  # imported as a library: the importer decides
        raise
    print("error: interrupted while starting; nothing was written", file=sys.stderr)
    sys.exit(128 + signal.SIGINT)

ATOMIC_HEADER = ["user_id:token", "item_id:token", "rating:float", "timestamp:float", "market:token"]
SOURCE_COLUMNS = ["userId", "itemId", "rate", "date"]
SOURCE_PATTERN = re.compile(r"^([a-z]{2,})_5core\.txt$")
INTEGER = re.compile(r"[+-]?[0-9]+")
NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")  # a time or rating as a number


class ConversionError(ValueError):
    """A source folder or file that cannot be converted."""


def find_market_files(src_dir):
    """Return ``{market: path}`` for every ``<market>_5core.txt`` in ``src_dir``."""
    if not os.path.isdir(src_dir):
        raise ConversionError(f"source folder {src_dir!r} does not exist")
    files = {}
    for name in sorted(os.listdir(src_dir)):
        match = SOURCE_PATTERN.match(name.lower())
        if match and match.group(1) in files:
            raise ConversionError(f"{files[match.group(1)]!r} and {name!r} in {src_dir!r} are both market "
                                  f"{match.group(1)!r}; keep one of them")
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
    try:
        with open(path, encoding="utf-8-sig") as f:  # blank lines before the header, which pandas would skip
            skip = 0
            for line in f:
                if line.strip(" \t\r\n"):
                    break
                skip += 1
        # blank lines kept (as all-NaN rows) so that row i is line skip + 2 + i
        frame = pd.read_csv(path, sep=r"\s+", dtype=str, skiprows=skip, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise ConversionError(f"{path} is empty or blank; it needs the header 'userId itemId rate date' and a row "
                              "per rating (or remove the file)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ConversionError(f"{path}: cannot be read as UTF-8 rows of 'userId itemId rate date' "
                              f"({' '.join(str(err).split())})") from None
    if list(frame.columns) != SOURCE_COLUMNS:  # a repeated name would be renamed (date.1), an extra one ignored
        raise ConversionError(f"{path}: the header has {list(frame.columns)}; it must be 'userId itemId rate date'")
    if not isinstance(frame.index, pd.RangeIndex):  # pandas makes the first field an index when it is wider
        raise ConversionError(f"{path}: line {skip + 2} has more fields than the header 'userId itemId rate date'")
    frame = frame[~frame.isna().all(axis=1)]
    if frame.empty:
        raise ConversionError(f"{path} has a header but no rows (or remove the file)")
    lines = frame.index + skip + 2
    dates = pd.to_datetime(frame["date"], format="%Y-%m-%d", errors="coerce")
    ratings, inexact = float_ratings(frame["rate"])
    bad = lines[(dates.isna() | ratings.isna() | frame["userId"].isna() | frame["itemId"].isna()).to_numpy()]
    if len(bad):
        raise ConversionError(
            f"{path}: line {bad[0]} is malformed ({len(bad)} bad row(s)); each row needs "
            "userId, itemId, a finite numeric rate and a YYYY-MM-DD date"
        )
    check_exact_ratings(path, frame["rate"], ratings, inexact, lines)
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
    columns = {"--user": user, "--item": item, "--market": market, "--time": time, "--rating": rating}
    for name in dict.fromkeys(n for n in columns.values() if n is not None):
        flags = [flag for flag, n in columns.items() if n == name]
        if len(flags) > 1:
            raise ConversionError(f"{' and '.join(flags)} name the same column {name!r}; each needs its own column")
    if not os.path.isfile(path):
        raise ConversionError(f"CSV file {path!r} does not exist")
    if len(sep) != 1:
        raise ConversionError(f"--sep must be one character, got {sep!r} (a tab: --sep $'\\t')")
    starts = check_header_and_widths(path, sep)
    try:
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ConversionError(f"{path}: cannot be read as a CSV with separator {sep!r} "
                              f"({' '.join(str(err).split())})") from None
    missing = [f"{flag} {name!r}" for flag, name in columns.items() if name is not None and name not in frame]
    if missing:
        raise ConversionError(f"{path}: no column {', '.join(missing)}; the header has {list(frame.columns)}")
    # the line each row starts on (row i is line i + 2 unless a quoted value spans lines)
    lines = np.asarray(starts if len(starts) == len(frame) else range(2, len(frame) + 2))
    frame = frame[~(frame.apply(lambda column: column.str.strip()) == "").all(axis=1)]  # blank lines
    if frame.empty:
        raise ConversionError(f"{path} has a header but no rows")
    text = {flag: frame[name].str.strip() for flag, name in columns.items() if name is not None}
    times = pd.Series(0, index=frame.index, dtype="int64")
    bad = pd.concat([values == "" for values in text.values()], axis=1).any(axis=1)
    if time is not None:
        times = pd.Series(exact_times(text["--time"]), index=frame.index)
        bad |= times.isna()
    ratings, inexact = pd.Series(1.0, index=frame.index), pd.Series(False, index=frame.index)
    if rating is not None:
        ratings, inexact = float_ratings(text["--rating"])
        bad |= ratings.isna()
    if bad.any():
        first = bad.index[bad.to_numpy()][0]
        raise ConversionError(
            f"{path}: line {lines[first]} is malformed ({int(bad.sum())} bad row(s)): {frame.loc[first].to_dict()}; "
            "each row needs a user, an item and a market"
            + (", a date or a finite number of seconds (within ±9.2e18) as time" if time else "")
            + (", a finite numeric rating" if rating else "") + ": fix or remove such rows"
        )
    if rating is not None:
        check_exact_ratings(path, text["--rating"], ratings, inexact, lines[frame.index])
    broken = pd.concat([text[flag].str.contains(r"[\t\r\n]") for flag in ("--user", "--item", "--market")],
                       axis=1).any(axis=1)
    if broken.any():
        first = broken.index[broken.to_numpy()][0]
        raise ConversionError(f"{path}: line {lines[first]} has a tab or line break inside a user, item or market "
                              f"({int(broken.sum())} such row(s)): {frame.loc[first].to_dict()}; atomic files are "
                              "tab separated: remove them from the values")
    markets = text["--market"].str.lower()
    renamed = {raw: name for raw, name in zip(frame[market], markets) if raw != name}
    out = pd.DataFrame({"user_id": markets + "_" + text["--user"], "item_id": text["--item"],
                        "rating": ratings, "timestamp": times, "market": markets})
    order = times
    if times.dtype == object:  # Decimal fractions among the ints: sort by exact rank (floats could tie or wrap)
        rank = {value: i for i, value in enumerate(sorted(set(times)))}
        order = times.map(rank.__getitem__)
    out = out.assign(order=order).sort_values(["user_id", "order"], kind="stable").drop(columns="order")
    return out.drop_duplicates(["user_id", "item_id"], keep="first"), len(out), renamed


def exact_seconds(number):
    """An int, or a Decimal as an int when whole, else as a Decimal without trailing zeros (``str`` writes it
    exactly); None when it is beyond ±2**63 (RecBole's int64 range)."""
    if not -(2**63) <= number < 2**63:
        return None
    if isinstance(number, int):
        return number
    number = number.normalize(Context(prec=max(1, len(number.as_tuple().digits))))  # exact: no digit is cut
    return int(number) if number.as_tuple().exponent >= 0 else number


def exact_times(text):
    """Each time (a number of seconds since 1970 or a date) as its exact seconds: an int when whole, else a
    Decimal; None where it is neither or beyond ±2**63.  No float on the way, so neither a fraction nor the last
    digits of a large number are lost (a column mixing numbers and dates would be float64 in pandas)."""
    values = [None] * len(text)
    numeric = text.str.fullmatch(NUMBER).to_numpy(dtype=bool)
    for i in np.flatnonzero(numeric):
        value = text.iat[i]
        values[i] = exact_seconds(int(value) if INTEGER.fullmatch(value) else Decimal(value))
    dated = np.flatnonzero(~numeric)
    if len(dated):
        dates = pd.to_datetime(text.iloc[dated], errors="coerce", format="mixed", utc=True)  # naive dates are UTC
        known = dates.notna().to_numpy()
        ticks = (dates[known] - pd.Timestamp(0, tz="UTC")).to_numpy()  # timedelta64 in pandas' unit (ns)
        digits = {"s": 0, "ms": -3, "us": -6, "ns": -9}[np.datetime_data(ticks.dtype)[0]]
        for i, tick in zip(dated[known], ticks.astype("int64")):
            values[i] = exact_seconds(Decimal(int(tick)).scaleb(digits))
    return values


def float_ratings(text):
    """Ratings as floats (NaN where not a finite plain number), and which of them a float cannot hold exactly:
    the shortest text of the float, which the atomic file gets, is another number (``0.1`` is fine: it round-trips).
    Python's ``float`` parses them: it rounds correctly, where pandas may be off in the last digit."""
    ratings, inexact = [], []
    for value in text:
        rating = float(value) if isinstance(value, str) and NUMBER.fullmatch(value) else np.nan
        rating = rating if np.isfinite(rating) else np.nan
        ratings.append(rating)
        inexact.append(rating == rating and value != repr(rating) and Decimal(value) != Decimal(repr(rating)))
    return pd.Series(ratings, index=text.index, dtype=float), pd.Series(inexact, index=text.index, dtype=bool)


def check_exact_ratings(path, text, ratings, inexact, lines):
    """Stop at the first rating a float cannot hold exactly: writing it would change it silently."""
    if inexact.any():
        first = int(np.flatnonzero(inexact.to_numpy())[0])
        raise ConversionError(
            f"{path}: line {lines[first]} has rating {text.iloc[first]!r}, more digits than a float holds (it would "
            f"become {float(ratings.iloc[first])!r}; {int(inexact.sum())} such row(s)): round such ratings to 15 "
            "significant digits")


def check_header_and_widths(path, sep):
    """The first line names each column once (pandas would rename a repeated name ``m.1`` and use the first
    silently), and every non-blank row has as many fields as it (pandas would shift or cut the others).
    Returns the line each row after the header starts on."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a byte order mark is not in the first name
            rows = csv.reader(f, delimiter=sep)
            header = next(rows, [])
            if not any(name.strip() for name in header):
                raise ConversionError(f"{path}: line 1 names no column (an empty file or a blank first line); "
                                      "the first line must be the header naming the columns")
            repeated = sorted({name for name in header if name and header.count(name) > 1})
            if repeated:
                raise ConversionError(f"{path}: the header names column(s) {repeated} more than once; give each "
                                      "column its own name")
            width = len(header)
            starts, end = [], rows.line_num
            for row in rows:
                starts.append(end + 1)  # a quoted value may span lines: the row starts after the last one
                end = rows.line_num
                if row and any(v.strip() for v in row) and len(row) != width:
                    raise ConversionError(
                        f"{path}: line {starts[-1]} has {len(row)} field(s), the header has {width}: {row}; "
                        f"fix the row (a {sep!r} inside a value needs quotes)")
            return starts
    except (UnicodeDecodeError, csv.Error) as err:
        raise ConversionError(f"{path}: cannot be read as a UTF-8 CSV with separator {sep!r} "
                              f"({' '.join(str(err).split())})") from None


def check_output(out_dir, dataset):
    """``--dataset`` is RecBole's ``--dataset``, so one folder name under ``--out``, not a path or blank."""
    if not out_dir:
        raise ConversionError("--out must name a folder, e.g. --out atomic_data")
    if not dataset.strip() or dataset in (".", "..") or "/" in dataset or "\\" in dataset:
        raise ConversionError(f"--dataset must be a plain folder name such as 'shop', got {dataset!r}")


def write_atomic(inter, out_dir, dataset):
    """Write ``out_dir/<dataset>/<dataset>.inter`` whole or not at all; returns its path.  Folders made for it
    are removed again when the write fails or is interrupted."""
    target_dir = os.path.join(out_dir, dataset)
    target = os.path.join(target_dir, f"{dataset}.inter")
    made = []  # the folders os.makedirs will make, deepest first
    folder = os.path.abspath(target_dir)
    while not os.path.lexists(folder):
        made.append(folder)
        folder = os.path.dirname(folder)

    # exact texts: a rating's shortest repr (5.0, 2.25), a time's int or Decimal (1700000000, 1700000000.25)
    rows = inter.assign(rating=[repr(float(r)) for r in inter["rating"]], timestamp=inter["timestamp"].map(str))

    def write(f):
        f.write("\t".join(ATOMIC_HEADER) + "\n")
        rows.to_csv(f, sep="\t", header=False, index=False)

    try:
        os.makedirs(target_dir, exist_ok=True)
        write_atomically(target, write)
    except BaseException as err:
        for folder in made:
            with suppress(OSError):  # not made, or no longer empty
                os.rmdir(folder)
        if isinstance(err, OSError) and err.errno is not None and err.filename is None:
            raise OSError(err.errno, err.strerror, target) from None  # a full disk names no file
        raise
    return target


def convert(src_dir, out_dir, dataset="xmarket"):
    """Write ``out_dir/<dataset>/<dataset>.inter`` from XMarket files and return the combined frame."""
    check_output(out_dir, dataset)
    frames = [read_market(m, p) for m, p in find_market_files(src_dir).items()]
    inter = pd.concat(frames, ignore_index=True)
    write_atomic(inter, out_dir, dataset)
    return inter


def market_counts(inter):
    """Per-market users, items and interactions of an interaction frame."""
    return inter.groupby("market").agg(
        users=("user_id", "nunique"), items=("item_id", "nunique"), interactions=("item_id", "size")
    )


class ArgumentParser(argparse.ArgumentParser):
    """An argument error is a ConversionError (one ``error:`` line, exit status 2), not argparse's usage line
    plus message; a flag must be spelled out (no ``--data`` for ``--dataset``) and given once."""

    def __init__(self, **kwargs):
        super().__init__(allow_abbrev=False, **kwargs)
        self.given = set()

    def parse_known_args(self, args=None, namespace=None):
        self.given = set()
        return super().parse_known_args(args, namespace)

    def error(self, message):
        raise ConversionError(f"{' '.join(message.split())}; see --help for the flags")


class Once(argparse.Action):
    """Store a flag's value; a second one is an error (argparse would keep the last one silently)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if self.dest in parser.given:
            raise argparse.ArgumentError(self, f"given more than once; give {option_string} once")
        parser.given.add(self.dest)
        setattr(namespace, self.dest, values)


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", nargs="?", help="folder holding <market>_5core.txt files")
    parser.add_argument("--csv", action=Once, help="a CSV file of interactions instead (with --user, --item, --market)")
    for column in ("user", "item", "market", "time", "rating"):
        parser.add_argument(f"--{column}", action=Once, help=f"CSV: the column holding the {column}")
    parser.add_argument("--sep", action=Once, default=",", help="CSV: the field separator (default ,)")
    parser.add_argument("--out", action=Once, default="atomic_data", help="atomic data root (default: atomic_data)")
    parser.add_argument("--dataset", action=Once, default="xmarket", help="dataset name (default: xmarket)")
    return parser.parse_args(argv)


def main(argv=None):
    target = None
    written = False
    on_sigterm = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        args = parse_args(argv)
        target = os.path.join(args.out, args.dataset, args.dataset + ".inter")
        if (args.src is None) == (args.csv is None):
            raise ConversionError("give either a folder of <market>_5core.txt files or --csv FILE")
        if args.csv is not None:
            needed = [f"--{c}" for c in ("user", "item", "market") if getattr(args, c) is None]
            if needed:
                raise ConversionError(f"--csv needs {', '.join(needed)}: the columns holding them")
            check_output(args.out, args.dataset)
            inter, rows, renamed = read_csv(args.csv, args.user, args.item, args.market, args.time, args.rating,
                                            args.sep)
            write_atomic(inter, args.out, args.dataset)
            written = True
            if renamed:
                print("market names lower-cased and stripped: "
                      + ", ".join(f"{raw!r} -> {name!r}" for raw, name in sorted(renamed.items())))
            print(f"{rows - len(inter)} repeated (user, item) row(s) collapsed into their earliest")
        else:
            inter = convert(args.src, args.out, args.dataset)
            written = True
        print(market_counts(inter).to_string())
        print(f"wrote {target}: {len(inter)} interactions")
        return 0
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # an output folder that is read-only, a file, or on a full disk; an unreadable input
        print(io_error_line(err, "choose a writable folder with free space (--out) and check the input paths"),
              file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        line, status = interrupt_line(err, f"{target} was written whole" if written else "nothing was written")
        print(line, file=sys.stderr)
        return status
    finally:
        signal.signal(signal.SIGTERM, on_sigterm)


if __name__ == "__main__":
    code = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the work is done and reported: no Ctrl-C death in the shutdown
    sys.exit(code)
