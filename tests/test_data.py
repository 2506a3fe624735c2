"""Shipped atomic data and the converter."""

import os

import pandas as pd
import pytest

from recbole_cmr.config import SHIPPED_DATA_PATH
from recbole_cmr.data.convert import ConversionError, convert, main, market_counts

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
