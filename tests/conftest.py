"""Tiny cross-market fixtures, real RecBole Config/Dataset/Trainer throughout."""

import os
import warnings

import numpy as np
import pytest

from recbole_cmr.config import make_config
from recbole_cmr.data.convert import ATOMIC_HEADER

warnings.filterwarnings("ignore", category=FutureWarning)

#: market -> (users, items it sells); items overlap across markets as in XMarket.
TINY_MARKETS = {"aa": (40, range(1, 51)), "bb": (20, range(20, 61)), "cc": (15, range(30, 71))}


def write_tiny_dataset(root, name="tiny", seed=0, markets=TINY_MARKETS, header=ATOMIC_HEADER):
    """Write ``root/name/name.inter``: every user has 4-8 distinct items of their market."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, name), exist_ok=True)
    lines = ["\t".join(header)]
    for market, (n_users, items) in markets.items():
        items = np.array(list(items))
        weights = 1.0 / np.arange(1, len(items) + 1)  # popularity skew
        for u in range(n_users):
            chosen = rng.choice(items, size=rng.integers(4, 9), replace=False, p=weights / weights.sum())
            for item in chosen:
                day = 1_500_000_000 + 86400 * int(rng.integers(0, 30))
                lines.append(f"{market}_u{u}\ti{item}\t5.0\t{day}\t{market}")
    with open(os.path.join(root, name, f"{name}.inter"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    return write_tiny_dataset(str(tmp_path_factory.mktemp("atomic")))


@pytest.fixture
def tiny_config(tiny_root, tmp_path):
    """``tiny_config(model, market='bb', **overrides)``: a Config on the tiny dataset."""

    def build(model="Pop", market="bb", **overrides):
        config_dict = {"dataset": "tiny", "data_path": tiny_root, "checkpoint_dir": str(tmp_path / "saved"),
                       "epochs": 2, "eval_neg_num": 20, "eval_batch_size": 4096, "state": "WARNING"}
        config_dict.update(overrides)
        return make_config(model, market, config_dict=config_dict)

    return build


@pytest.fixture
def tiny_settings(tiny_root, tmp_path):
    """``tiny_settings(**overrides)``: a config dict for ``run``/``compare`` on the tiny dataset."""

    def build(**overrides):
        return {"dataset": "tiny", "data_path": tiny_root, "checkpoint_dir": str(tmp_path / "saved"), "epochs": 2,
                "eval_neg_num": 20, "state": "WARNING", **overrides}

    return build
