"""Shipped atomic data and the converter."""

import os

import pandas as pd
import pytest

from recbole_cmr.config import SHIPPED_DATA_PATH
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
    ("a,b,c,r\n1,x,de,five\n", ["--user", "a", "--item", "b", "--market", "c", "--rating", "r"], "a numeric rating"),
    ("a,b,c\n", ["--user", "a", "--item", "b", "--market", "c"], "has a header but no rows"),
    ("a,b,c\n1,x,de\n", ["--user", "a", "--item", "b"], "--csv needs --market"),
    # pandas would shift the first row's fields (user 'x', market 'extra') or cut the extra field silently
    ("a,b,c\n1,x,de,extra\n2,y,de\n", ["--user", "a", "--item", "b", "--market", "c"],
     "line 2 has 4 field(s), the header has 3"),
    ("a,b,c\n1,x,de\n2,y,de,extra\n", ["--user", "a", "--item", "b", "--market", "c"], "line 3 has 4 field(s)"),
    ('a,b,c\n"1\t2",x,de\n', ["--user", "a", "--item", "b", "--market", "c"], "a tab or line break inside"),
    ("a,b,c\n1,x,de\n", ["--user", "a", "--item", "b", "--market", "c", "--sep", "::"], "--sep must be one character"),
])
def test_csv_import_errors_write_nothing(tmp_path, capsys, rows, flags, message):
    path = _write_csv(tmp_path, rows)
    assert main(["--csv", path, *flags, "--out", str(tmp_path / "atomic")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "atomic").exists() or not os.listdir(tmp_path / "atomic" / "xmarket")
