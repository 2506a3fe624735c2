"""Shipped atomic data and the converter."""

import errno
import os
import re
import runpy
import signal
import subprocess
import sys

import pandas as pd
import pytest

from recbole_cmr.config import SHIPPED_DATA_PATH
from recbole_cmr.data import convert as convert_module
from recbole_cmr.data.convert import ATOMIC_HEADER, ConversionError, convert, main, market_counts

#: Per market after collapsing duplicate (user, item) rows of the XMarket 5-core files.
SHIPPED_COUNTS = {
    "ca": (4668, 5735, 43891), "de": (1851, 2179, 16647), "fr": (1838, 1879, 17154), "in": (239, 470, 1973),
    "jp": (487, 955, 4355), "mx": (1878, 1645, 16933), "uk": (3352, 3251, 30874),
}


def test_shipped_file_counts_per_market():
    frame = pd.read_csv(os.path.join(SHIPPED_DATA_PATH, "xmarket", "xmarket.inter"), sep="\t")
    assert list(frame.columns) == ["user_id:token", "item_id:token", "rating:float", "timestamp:float",
                                   "market:token"]
    frame.columns = [c.split(":")[0] for c in frame.columns]
    counts = market_counts(frame)
    assert {m: tuple(int(v) for v in row) for m, row in counts.iterrows()} == SHIPPED_COUNTS
    assert not frame.duplicated(["user_id", "item_id"]).any()
    assert frame["item_id"].nunique() == 8304
    # a user token always carries its market
    assert (frame["user_id"].str.split("_").str[0] == frame["market"]).all()


def _write_source(folder, market, rows):
    with open(os.path.join(folder, f"{market}_5core.txt"), "w") as f:
        f.write("userId itemId rate date\n" + "\n".join(rows) + "\n")


def test_converter_collapses_duplicates_and_prefixes_users(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _write_source(src, "xx", ["U1 I1 5.0 2020-01-02", "U1 I1 3.0 2020-01-01", "U1 I2 4.0 2020-01-03"])
    _write_source(src, "yy", ["U1 I1 5.0 2020-02-01"])
    inter = convert(str(src), str(tmp_path / "out"), "mini")
    assert len(inter) == 3
    kept = inter[(inter.user_id == "xx_U1") & (inter.item_id == "I1")]
    assert kept.rating.tolist() == [3.0]  # the earliest row of the duplicate pair
    assert set(inter.user_id) == {"xx_U1", "yy_U1"}
    text = (tmp_path / "out" / "mini" / "mini.inter").read_text().splitlines()
    assert text[0].split("\t") == ["user_id:token", "item_id:token", "rating:float", "timestamp:float",
                                   "market:token"]
    assert len(text) == 4


def test_converter_rejects_malformed_rows_without_writing(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    _write_source(src, "xx", ["U1 I1 5.0 2020-01-02", "U2 I3 five 2020-01-01"])
    with pytest.raises(ConversionError, match="line 3 is malformed"):
        convert(str(src), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "xmarket" / "xmarket.inter").exists()
    assert main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _write_csv(tmp_path, text):
    path = tmp_path / "shop.csv"
    path.write_text(text)
    return str(path)


def test_csv_import_writes_atomic_files_that_run(tmp_path, capsys):
    from recbole_cmr.quick_start import run

    rows = ["customer,product,country,when,stars"]
    for market, n_users in (("BR", 6), ("PT", 4)):
        for u in range(n_users):
            for i in range(4):
                rows.append(f"{u},p{(u + i) % 9},{market},2024-01-{i + 1:02d},{1 + i % 5}")
    rows += ["0,p0,BR,2024-02-01,5", "", "3,p8,PT,1700000000,4"]  # a repeat (collapsed), a blank line, epoch time
    path = _write_csv(tmp_path, "\n".join(rows) + "\n")
    code = main(["--csv", path, "--user", "customer", "--item", "product", "--market", "country", "--time", "when",
                 "--rating", "stars", "--out", str(tmp_path / "atomic"), "--dataset", "shop"])
    out = capsys.readouterr().out
    assert code == 0 and "1 repeated (user, item) row(s) collapsed" in out and "br" in out and "pt" in out
    assert "market names lower-cased and stripped: 'BR' -> 'br', 'PT' -> 'pt'" in out
    lines = (tmp_path / "atomic" / "shop" / "shop.inter").read_text().splitlines()
    assert lines[0].split("\t") == ATOMIC_HEADER and len(lines) == 1 + 40 + 1
    assert "br_0\tp0\t1.0\t1704067200\tbr" in lines
    _, result = run("Pop", "PT", config_dict={"dataset": "shop", "data_path": str(tmp_path / "atomic"),
                                             "checkpoint_dir": str(tmp_path / "saved"), "eval_neg_num": 3,
                                             "state": "WARNING", "epochs": 1})
    assert result[-1]["split"] == "test"


@pytest.mark.parametrize("rows, flags, message", [
    ("a,b,c\n1,x,de\n", ["--user", "a", "--item", "b", "--market", "m"], "no column --market 'm'"),
    ("a,b,c\n1,x,de\n2,,de\n", ["--user", "a", "--item", "b", "--market", "c"], "line 3 is malformed"),
    ("a,b,c,t\n1,x,de,2024-01-01\n2,y,de,yesterday\n", ["--user", "a", "--item", "b", "--market", "c", "--time", "t"],
     "line 3 is malformed (1 bad row(s))"),
    ("a,b,c,r\n1,x,de,five\n", ["--user", "a", "--item", "b", "--market", "c", "--rating", "r"],
     "a finite numeric rating"),
    ("a,b,c\n", ["--user", "a", "--item", "b", "--market", "c"], "has a header but no rows"),
    ("a,b,c\n1,x,de\n", ["--user", "a", "--item", "b"], "--csv needs --market"),
    # pandas would shift the first row's fields (user 'x', market 'extra') or cut the extra field silently
    ("a,b,c\n1,x,de,extra\n2,y,de\n", ["--user", "a", "--item", "b", "--market", "c"],
     "line 2 has 4 field(s), the header has 3"),
    ("a,b,c\n1,x,de\n2,y,de,extra\n", ["--user", "a", "--item", "b", "--market", "c"], "line 3 has 4 field(s)"),
    ('a,b,c\n"1\t2",x,de\n', ["--user", "a", "--item", "b", "--market", "c"], "a tab or line break inside"),
    ("a,b,c\n1,x,de\n", ["--user", "a", "--item", "b", "--market", "c", "--sep", "::"], "--sep must be one character"),
    # no header for pandas to read (it would raise EmptyDataError)
    ("", ["--user", "a", "--item", "b", "--market", "c"], "line 1 names no column"),
    ("\na,b,c\n1,x,de\n", ["--user", "a", "--item", "b", "--market", "c"], "line 1 names no column"),
    # pandas would rename the second 'c' to 'c.1' and use the first silently
    ("a,b,c,c\n1,x,de,fr\n", ["--user", "a", "--item", "b", "--market", "c"], "names column(s) ['c'] more than once"),
    # times that are not finite or beyond int64 (1e30 would wrap round to -9223372036854775808)
    *[(f"a,b,c,t\n1,x,de,5\n2,y,de,{t}\n", ["--user", "a", "--item", "b", "--market", "c", "--time", "t"],
       "line 3 is malformed (1 bad row(s))") for t in ("inf", "-inf", "nan", "1e30", "-1e30", "9223372036854775808")],
    *[(f"a,b,c,r\n1,x,de,{r}\n", ["--user", "a", "--item", "b", "--market", "c", "--rating", "r"],
       "line 2 is malformed (1 bad row(s))") for r in ("inf", "-inf", "nan")],
    # one column in two roles
    ("a,b,c\n1,x,de\n", ["--user", "a", "--item", "a", "--market", "c"], "--user and --item name the same column 'a'"),
    ("a,b,c,t\n1,x,de,5\n", ["--user", "a", "--item", "b", "--market", "c", "--time", "t", "--rating", "t"],
     "--time and --rating name the same column 't'"),
    # a dataset name that is not one folder
    *[("a,b,c\n1,x,de\n", ["--user", "a", "--item", "b", "--market", "c", "--dataset", name],
       f"--dataset must be a plain folder name such as 'shop', got {name!r}") for name in ("a/b", "", " ", "..")],
])
def test_csv_import_errors_write_nothing(tmp_path, capsys, rows, flags, message):
    path = _write_csv(tmp_path, rows)
    assert main(["--csv", path, *flags, "--out", str(tmp_path / "atomic")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "atomic").exists()


def test_csv_times_at_the_int64_bounds_are_kept(tmp_path, capsys):
    path = _write_csv(tmp_path, "a,b,c,t\n1,x,de,9223372036854775807\n2,y,de,-9223372036854775808\n")
    assert main(["--csv", path, "--user", "a", "--item", "b", "--market", "c", "--time", "t",
                 "--out", str(tmp_path / "atomic")]) == 0
    lines = (tmp_path / "atomic" / "xmarket" / "xmarket.inter").read_text().splitlines()
    assert [line.split("\t")[3] for line in lines[1:]] == ["9223372036854775807", "-9223372036854775808"]


@pytest.mark.parametrize("files, message", [
    ({"xx_5core.txt": ""}, "xx_5core.txt is empty"),  # pandas would raise EmptyDataError
    ({"xx_5core.txt": "userId itemId rate date\n"}, "xx_5core.txt has a header but no rows"),
    ({"xx_5core.txt": "userId itemId rate date date\nU1 I1 5.0 2020-01-02 2020-01-03\n"},
     "the header has ['userId', 'itemId', 'rate', 'date', 'date.1']"),
    ({"xx_5core.txt": "userId itemId rate date\nU1 I1 inf 2020-01-02\n"}, "line 2 is malformed"),
    ({"xx_5core.txt": "userId itemId rate date\nU1 I1 5.0 2020-01-02 x\n"}, "line 2 has more fields than the header"),
    ({"xx_5core.txt": "userId itemId rate date\nU1 I1 5.0 2020-01-02\nU2 I1 5.0 2020-01-02 x\n"},
     "Expected 4 fields in line 3, saw 5"),
    ({"xx_5core.txt": "userId itemId rate date\nU1 I1 5.0 2020-01-02\n", "XX_5core.txt": ""}, "are both market 'xx'"),
])
def test_xmarket_errors_write_nothing(tmp_path, capsys, files, message):
    src = tmp_path / "src"
    src.mkdir()
    for name, text in files.items():
        (src / name).write_text(text)
    with pytest.raises(ConversionError, match=re.escape(message)):
        convert(str(src), str(tmp_path / "atomic"))
    assert main([str(src), "--out", str(tmp_path / "atomic")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "atomic").exists()


def _convert_tiny_csv(tmp_path, out):
    path = _write_csv(tmp_path, "a,b,c\n1,x,de\n2,y,de\n")
    return main(["--csv", path, "--user", "a", "--item", "b", "--market", "c", "--out", out])


def _write_part_then(fail):
    """A ``DataFrame.to_csv`` that writes part of a row, then calls ``fail`` (a full disk, a signal)."""
    def to_csv(frame, f, **kwargs):
        f.write("1\tx\t")
        fail()
    return to_csv


@pytest.mark.parametrize("out, message", [
    ("", "--out must name a folder"),
    ("{tmp}/blocker/atomic", "cannot write or read {tmp}/blocker/atomic: Not a directory"),  # a file on the way
    ("/proc/recbole_cmr_atomic", "cannot write or read /proc/recbole_cmr_atomic: No such file or directory"),
])
def test_csv_import_unwritable_out_is_one_error_line(tmp_path, capsys, out, message):
    if out.startswith("/proc") and not os.path.isdir("/proc/self"):
        pytest.skip("no /proc")
    (tmp_path / "blocker").write_text("a file, not a folder")
    assert _convert_tiny_csv(tmp_path, out.format(tmp=tmp_path)) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert (tmp_path / "blocker").read_text() == "a file, not a folder"


def test_csv_import_full_disk_leaves_no_file_or_folder(tmp_path, capsys, monkeypatch):
    def disk_full():
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", _write_part_then(disk_full))
    assert _convert_tiny_csv(tmp_path, str(tmp_path / "atomic" / "deep")) == 2
    err = capsys.readouterr().err
    assert err == (f"error: cannot write or read {tmp_path / 'atomic' / 'deep' / 'xmarket' / 'xmarket.inter'}: No "
                   "space left on device; choose a writable folder with free space (--out) and check the input paths\n")
    assert not (tmp_path / "atomic").exists()


@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"),
                                                 (signal.SIGTERM, 143, "terminated")])
def test_csv_import_interrupted_mid_write_leaves_nothing(tmp_path, capsys, monkeypatch, signum, code, word):
    (tmp_path / "atomic").mkdir()  # a folder that was there stays
    monkeypatch.setattr(pd.DataFrame, "to_csv", _write_part_then(lambda: os.kill(os.getpid(), signum)))
    on_sigterm = signal.getsignal(signal.SIGTERM)
    # Ctrl-C raises KeyboardInterrupt as in a terminal (a job started in the background inherits SIGINT ignored)
    on_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert _convert_tiny_csv(tmp_path, str(tmp_path / "atomic" / "deep")) == code
    finally:
        signal.signal(signal.SIGINT, on_sigint)
    assert capsys.readouterr().err == f"error: {word}; nothing was written\n"
    assert os.listdir(tmp_path / "atomic") == []
    assert signal.getsignal(signal.SIGTERM) is on_sigterm


def test_csv_import_interrupted_after_the_write_says_so(tmp_path, capsys, monkeypatch):
    def interrupt(inter):
        raise KeyboardInterrupt

    monkeypatch.setattr(convert_module, "market_counts", interrupt)
    assert _convert_tiny_csv(tmp_path, str(tmp_path / "atomic")) == 130
    target = tmp_path / "atomic" / "xmarket" / "xmarket.inter"
    assert capsys.readouterr().err == f"error: interrupted; {target} was written whole\n"
    assert len(target.read_text().splitlines()) == 3


class _InterruptImport:
    """A meta path finder: Ctrl-C while ``recbole_cmr.utils`` (torch) is being imported."""

    def find_spec(self, name, path=None, target=None):
        if name == "recbole_cmr.utils":
            raise KeyboardInterrupt
        return None


@pytest.mark.parametrize("run_name", ["__main__", "recbole_cmr_convert_as_a_library"])
def test_ctrl_c_while_importing_is_one_line_when_run(monkeypatch, capsys, run_name):
    monkeypatch.delitem(sys.modules, "recbole_cmr.utils")
    monkeypatch.delitem(sys.modules, "recbole_cmr.data.convert")
    monkeypatch.setattr(sys, "meta_path", [_InterruptImport(), *sys.meta_path])
    monkeypatch.setattr(sys, "argv", ["convert", "--csv", "never-read.csv"])
    if run_name == "__main__":  # python -m recbole_cmr.data.convert
        try:
            runpy.run_module("recbole_cmr.data.convert", run_name=run_name)
        except KeyboardInterrupt:  # would stop pytest itself
            pytest.fail("Ctrl-C while importing escaped as a traceback")
        except SystemExit as exit_:
            assert exit_.code == 130
        else:
            pytest.fail("the command ran on after Ctrl-C")
        assert capsys.readouterr().err == "error: interrupted while starting; nothing was written\n"
    else:  # an importer gets the interrupt itself
        with pytest.raises(KeyboardInterrupt):
            runpy.run_module("recbole_cmr.data.convert", run_name=run_name)
        assert capsys.readouterr().err == ""


_TINY = ["--user", "a", "--item", "b", "--market", "c"]


@pytest.mark.parametrize("flags, message", [
    # a flag given twice: argparse would keep the last one silently
    ([*_TINY, "--user", "b"], "argument --user: given more than once; give --user once"),
    ([*_TINY, "--out=elsewhere"], "argument --out: given more than once; give --out once"),
    ([*_TINY, "--dataset", "one", "--dataset", "two"], "argument --dataset: given more than once"),
    ([*_TINY, "--csv", "other.csv"], "argument --csv: given more than once"),
    # a shortened flag: argparse would take --data for --dataset, --mark for --market
    ([*_TINY, "--data", "shop"], "unrecognized arguments: --data"),
    (["--user", "a", "--item", "b", "--mark", "c"], "unrecognized arguments: --mark"),
    ([*_TINY, "--bogus"], "unrecognized arguments: --bogus"),
    ([*_TINY, "--time"], "argument --time: expected one argument"),
])
def test_argument_errors_are_one_error_line(tmp_path, capsys, flags, message):
    path = _write_csv(tmp_path, "a,b,c\n1,x,de\n")
    assert main(["--csv", path, *flags, "--out", str(tmp_path / "atomic")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: {message}") and err.endswith("; see --help for the flags\n")
    assert len(err.splitlines()) == 1
    assert os.listdir(tmp_path) == ["shop.csv"]


def test_argument_error_of_the_command_is_one_line(tmp_path):
    path = _write_csv(tmp_path, "a,b,c\n1,x,de\n")
    done = subprocess.run([sys.executable, "-m", "recbole_cmr.data.convert", "--csv", path, *_TINY, "--dat", "x",
                           "--out", str(tmp_path / "atomic")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "error: unrecognized arguments: --dat; see --help for the flags\n"
    assert os.listdir(tmp_path) == ["shop.csv"]


def test_help_still_prints_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "--dataset DATASET" in capsys.readouterr().out


def test_csv_values_are_written_exactly(tmp_path, capsys):
    rows = [
        "u,i,m,t,r",
        "1,a,de,1700000000.5,2.25",  # a fraction of a second; a rating with two decimals
        "1,b,de,2024-01-01 00:00:00.25,5",  # a date with a fraction; a whole rating
        "2,a,de,9007199254740993,0.1",  # beyond 2**53 in a column with dates (float64 would make it ...992)
        "2,b,de,2024-01-01T02:00:00+02:00,4.50",  # an offset: seconds from UTC
        "3,a,de,1969-12-31 23:59:59.5,3",
        "3,b,de,1.5e9,1e1",
        "4,a,de,9007199254740993.5,1",  # two times a float cannot tell apart: the earlier is kept
        "4,a,de,9007199254740993.25,2",
        "4,b,de,-9223372036854775808,3.0",
        "5,a,de,0.000000001,4.25",
    ]
    path = _write_csv(tmp_path, "\n".join(rows) + "\n")
    assert main(["--csv", path, "--user", "u", "--item", "i", "--market", "m", "--time", "t", "--rating", "r",
                 "--out", str(tmp_path / "atomic")]) == 0
    lines = (tmp_path / "atomic" / "xmarket" / "xmarket.inter").read_text().splitlines()
    assert [line.split("\t")[:4] for line in lines[1:]] == [
        ["de_1", "a", "2.25", "1700000000.5"],
        ["de_1", "b", "5.0", "1704067200.25"],
        ["de_2", "b", "4.5", "1704067200"],
        ["de_2", "a", "0.1", "9007199254740993"],
        ["de_3", "a", "3.0", "-0.5"],
        ["de_3", "b", "10.0", "1500000000"],
        ["de_4", "b", "3.0", "-9223372036854775808"],
        ["de_4", "a", "2.0", "9007199254740993.25"],
        ["de_5", "a", "4.25", "1E-9"],
    ]
    assert "1 repeated (user, item) row(s) collapsed" in capsys.readouterr().out


def test_xmarket_ratings_are_written_exactly(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _write_source(src, "xx", ["U1 I1 2.25 2020-01-02", "U1 I2 5.0 2020-01-03", "U1 I3 4 2020-01-04",
                              "U1 I4 0.1 2020-01-05"])
    convert(str(src), str(tmp_path / "out"))
    lines = (tmp_path / "out" / "xmarket" / "xmarket.inter").read_text().splitlines()
    assert [line.split("\t")[2] for line in lines[1:]] == ["2.25", "5.0", "4.0", "0.1"]


def test_inexact_ratings_are_refused_with_their_line(tmp_path, capsys):
    # 17+ significant digits: the float (and so the atomic file) would hold another number
    path = _write_csv(tmp_path, "a,b,c,r\n1,x,de,4.5\n\n2,y,de,0.12345678901234567891\n")
    assert main(["--csv", path, *_TINY, "--rating", "r", "--out", str(tmp_path / "atomic")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: line 4 has rating '0.12345678901234567891', more digits than a float")
    assert len(err.splitlines()) == 1 and not (tmp_path / "atomic").exists()
    src = tmp_path / "src"
    src.mkdir()
    _write_source(src, "xx", ["U1 I1 5.0 2020-01-02", "U2 I1 4.000000000000000001 2020-01-02"])
    assert main([str(src), "--out", str(tmp_path / "atomic")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {src / 'xx_5core.txt'}: line 3 has rating '4.000000000000000001'")
    assert len(err.splitlines()) == 1 and not (tmp_path / "atomic").exists()


@pytest.mark.parametrize("text, message", [
    # blank and blank-looking lines, which pandas skips, still count
    ("userId itemId rate date\nU1 I1 5.0 2020-01-02\n\n  \t\nU2 I1 five 2020-01-02\n", "line 5 is malformed"),
    ("\n\nuserId itemId rate date\nU1 I1 5.0 2020-01-02\n\nU2 I1 5.0 2020-13-02\n", "line 6 is malformed"),
    ("userId itemId rate date\r\n\r\nU1 I1 5.0 2020-01-02\r\nU2 I1\r\n", "line 4 is malformed"),
    ("userId itemId rate date\n\nU1 I1 5.0 2020-01-02 x\n", "Expected 4 fields in line 3, saw 5"),
    ("\nuserId itemId rate date\nU1 I1 5.0 2020-01-02 x\nU2 I1 5.0 2020-01-02\n",
     "line 3 has more fields than the header"),
    ("userId itemId rate date\n\n\nU1 I1 1e-999 2020-01-02\n", "line 4 has rating '1e-999'"),
    ("\n \n", "xx_5core.txt is empty or blank"),
    ("userId itemId rate date\n\n \n", "xx_5core.txt has a header but no rows"),
])
def test_xmarket_error_lines_count_blank_lines(tmp_path, capsys, text, message):
    src = tmp_path / "src"
    src.mkdir()
    (src / "xx_5core.txt").write_bytes(text.encode())
    assert main([str(src), "--out", str(tmp_path / "atomic")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "atomic").exists()


def test_xmarket_blank_lines_are_skipped(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "xx_5core.txt").write_text("\nuserId itemId rate date\n\nU1 I1 5.0 2020-01-02\n \nU1 I2 4.0 2020-01-03\n\n")
    assert len(convert(str(src), str(tmp_path / "out"))) == 2


def test_csv_error_line_after_a_value_spanning_lines(tmp_path, capsys):
    path = _write_csv(tmp_path, 'a,b,c,note\n1,x,de,"two\nlines"\n\n2,,de,z\n')
    assert main(["--csv", path, *_TINY, "--out", str(tmp_path / "atomic")]) == 2
    assert "line 5 is malformed" in capsys.readouterr().err


SHIPPED_SOURCE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "xmarket_electronics")


@pytest.mark.skipif(not os.path.isdir(SHIPPED_SOURCE), reason="no XMarket electronics source files")
def test_shipped_file_rebuilds_byte_identical(tmp_path, capsys):
    assert main([SHIPPED_SOURCE, "--out", str(tmp_path), "--dataset", "xmarket"]) == 0
    shipped = os.path.join(SHIPPED_DATA_PATH, "xmarket", "xmarket.inter")
    with open(shipped, "rb") as f:
        assert (tmp_path / "xmarket" / "xmarket.inter").read_bytes() == f.read()
