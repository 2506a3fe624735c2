"""The leave-one-out cross-market split and its bad-input errors."""

import numpy as np
import pytest
from conftest import write_tiny_dataset
from recbole.utils import init_seed

from recbole_cmr.config import make_config
from recbole_cmr.data.dataset import CrossMarketDataset
from recbole_cmr.utils import CrossMarketError


def build(config):
    init_seed(config["seed"], True)
    dataset = CrossMarketDataset(config)
    return dataset, dataset.build()


def pairs(ds):
    return set(zip(ds.inter_feat[ds.uid_field].numpy().tolist(), ds.inter_feat[ds.iid_field].numpy().tolist()))


@pytest.mark.parametrize("order", ["random", "time"])
def test_split_invariants(tiny_config, order):
    dataset, (train, valid, test) = build(tiny_config(split_order=order))
    target = dataset.target_market_id
    uid = dataset.uid_field
    for part in (valid, test):
        users = part.inter_feat[uid].numpy()
        assert len(users) == len(np.unique(users)), "one valid and one test item per target user"
        assert (part.inter_feat[dataset.market_field].numpy() == target).all(), "no source user in valid/test"
    target_users = set(np.flatnonzero(dataset.user_market == target).tolist())
    assert set(valid.inter_feat[uid].numpy().tolist()) == target_users
    assert set(test.inter_feat[uid].numpy().tolist()) == target_users
    train_pairs, valid_pairs, test_pairs = pairs(train), pairs(valid), pairs(test)
    assert not train_pairs & valid_pairs and not train_pairs & test_pairs and not valid_pairs & test_pairs
    # all source rows are in train, and train + valid + test is everything
    assert len(train) + len(valid) + len(test) == len(dataset.inter_feat)
    source_rows = dataset.inter_feat[dataset.market_field].numpy() != target
    assert pairs(dataset.copy(dataset.inter_feat[source_rows])) <= train_pairs
    # the history models read holds no valid/test item
    history, lengths = dataset.train_history()
    for u, i in valid_pairs | test_pairs:
        assert i not in history[u, : lengths[u]].tolist()
    if order == "time":
        ts = dataset.time_field
        for u, t in zip(test.inter_feat[uid].numpy(), test.inter_feat[ts].numpy()):
            mask = train.inter_feat[uid].numpy() == u
            assert (train.inter_feat[ts].numpy()[mask] <= t).all()


def test_training_scopes(tiny_config):
    dataset, (train_all, _, _) = build(tiny_config(train_markets="all"))
    _, (train_target, _, _) = build(tiny_config(train_markets="target"))
    _, (train_source, _, _) = build(tiny_config(train_markets="source"))
    market = dataset.market_field
    target = dataset.target_market_id
    assert (train_target.inter_feat[market].numpy() == target).all()
    assert not (train_source.inter_feat[market].numpy() == target).any()
    assert len(train_all) == len(train_target) + len(train_source)


def test_same_seed_same_split_other_seed_other_split(tiny_config):
    _, (_, valid_a, test_a) = build(tiny_config(seed=1))
    _, (_, valid_b, test_b) = build(tiny_config(seed=1))
    _, (_, valid_c, test_c) = build(tiny_config(seed=2))
    assert pairs(test_a) == pairs(test_b) and pairs(valid_a) == pairs(valid_b)
    assert pairs(test_a) != pairs(test_c)


def test_source_markets_restrict_training(tiny_config):
    dataset, (train, _, _) = build(tiny_config(source_markets=["cc"]))
    markets = set(train.inter_feat[dataset.market_field].numpy().tolist())
    assert markets == {dataset.market_id("bb"), dataset.market_id("cc")}


@pytest.mark.parametrize("market, users", [("IN", 239), ("MX", 1877), ("UK", 3351)])
def test_shipped_split(tmp_path, market, users):
    """The README's data table: MX and UK each lose the one user the [3,inf) filter drops."""
    config = make_config("Pop", market, config_dict={"checkpoint_dir": str(tmp_path), "state": "WARNING"})
    dataset, (train, valid, test) = build(config)
    assert len(valid) == len(test) == users
    assert len(train) + 2 * users == len(dataset.inter_feat)


@pytest.mark.parametrize("overrides, message", [
    ({"market": "ZZ"}, "unknown market 'zz'; the dataset 'tiny' has markets: aa, bb, cc"),
    ({"source_markets": ["bb", "cc"]}, "also listed in source_markets"),
    ({"train_markets": "both"}, "unknown train_markets"),
    ({"split_order": "alphabetical"}, "unknown split_order"),
])
def test_bad_split_settings(tiny_config, overrides, message):
    with pytest.raises(CrossMarketError, match=message):
        build(tiny_config(**overrides))


def test_unknown_protocol(tiny_config):
    with pytest.raises(CrossMarketError, match="unknown eval_protocol 'pop'; choose one of paper, market, full"):
        tiny_config(eval_protocol="pop")


def test_missing_market_field(tmp_path, tiny_config):
    header = ["user_id:token", "item_id:token", "rating:float", "timestamp:float", "country:token"]
    root = write_tiny_dataset(str(tmp_path / "atomic"), header=header)
    with pytest.raises(CrossMarketError, match=r"has no field\(s\) \['market'\]"):
        build(tiny_config(data_path=root))


def test_malformed_atomic_file(tmp_path, tiny_config):
    root = tmp_path / "atomic"
    (root / "tiny").mkdir(parents=True)
    (root / "tiny" / "tiny.inter").write_text("user_id:token\titem_id:token\trating:float\tmarket:token\n"
                                              "u1\ti1\tfive\taa\n")
    with pytest.raises(CrossMarketError, match="line 2 has rating:float 'five', not a number"):
        build(tiny_config(data_path=str(root)))


def test_missing_atomic_file(tmp_path, tiny_config):
    with pytest.raises(CrossMarketError, match="does not exist.*recbole_cmr.data.convert"):
        build(tiny_config(data_path=str(tmp_path)))


def test_users_that_cannot_be_split(tmp_path, tiny_config):
    root = tmp_path / "atomic"
    (root / "tiny").mkdir(parents=True)
    rows = ["user_id:token\titem_id:token\trating:float\ttimestamp:float\tmarket:token"]
    rows += [f"aa_u{u}\ti{i}\t5\t{i}\taa" for u in range(5) for i in range(5)]
    rows += ["bb_u0\ti1\t5\t1\tbb", "bb_u0\ti2\t5\t2\tbb"]
    (root / "tiny" / "tiny.inter").write_text("\n".join(rows) + "\n")
    with pytest.raises(CrossMarketError, match="1 user\\(s\\) have fewer than 3 interactions"):
        build(tiny_config(data_path=str(root), user_inter_num_interval="[0,inf)"))
