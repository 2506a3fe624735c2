"""The comparison grid: resumable, one table with protocol and seeds, a plot, a paired test."""

import os

import numpy as np
import pytest

from recbole_cmr.compare import compare
from recbole_cmr.utils import CrossMarketError


def tiny_dict(tiny_root):
    return {"dataset": "tiny", "data_path": tiny_root, "epochs": 2, "eval_neg_num": 20,
            "embedding_size": 8, "n_heads": 2, "n_layers": 1}


def test_grid_table_plot_and_resume(tiny_root, tmp_path):
    out = compare(["ACMR", "Pop"], ["bb", "cc"], [1, 2], "market", ["single", "++"], str(tmp_path / "cmp"),
                  tiny_dict(tiny_root))
    table = open(os.path.join(out, "table.md")).read()
    assert "protocol `market`, seeds 1, 2" in table
    for label in ("ACMR", "Pop (single)", "Pop (++)"):
        assert f"| {label} |" in table
    assert "**" in table and "Wilcoxon" in table
    assert os.path.getsize(os.path.join(out, "plot.png")) > 1000
    per_user = np.load(os.path.join(out, "per_user", "Pop-single-bb-1.npz"))
    assert len(per_user["market/ndcg@10"]) == len(per_user["user_id"]) == 20
    runs = sorted(os.listdir(os.path.join(out, "runs")))
    assert len(runs) == 12
    compare(["ACMR", "Pop"], ["bb", "cc"], [1, 2], "market", ["single", "++"], out, tiny_dict(tiny_root))
    assert sorted(os.listdir(os.path.join(out, "runs"))) == runs, "a finished grid re-runs nothing"


@pytest.mark.parametrize("models, markets, message", [
    (["Popp"], ["bb"], "unknown model 'Popp'. Did you mean: Pop"),
    (["Pop"], ["bb", "zz"], "unknown market 'zz'"),
])
def test_bad_grid_fails_before_running(tiny_root, tmp_path, models, markets, message):
    with pytest.raises(CrossMarketError, match=message):
        compare(models, markets, [1], "market", ["++"], str(tmp_path / "cmp"), tiny_dict(tiny_root))
    assert not (tmp_path / "cmp").exists()
