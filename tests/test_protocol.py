"""What each evaluation protocol puts in front of a model."""

import numpy as np
import pytest
import torch
from recbole.utils import init_seed

from recbole_cmr.data.dataset import CrossMarketDataset
from recbole_cmr.data.protocol import data_preparation, eval_dataloaders


def loaders(config):
    init_seed(config["seed"], True)
    dataset = CrossMarketDataset(config)
    built = dataset.build()
    return dataset, built, eval_dataloaders(config, dataset, built)


def items_of_users(dataset):
    """All items of every user, over the whole (unsplit) data."""
    out = {}
    for u, i in zip(dataset.inter_feat[dataset.uid_field].numpy(), dataset.inter_feat[dataset.iid_field].numpy()):
        out.setdefault(int(u), set()).add(int(i))
    return out


def candidates(loader):
    """user -> (positive item, list of negatives) as the evaluation batches present them."""
    out = {}
    for interaction, _, _, _ in loader:
        users, items, labels = (interaction[k].numpy() for k in ("user_id", "item_id", "label"))
        for u, i, label in zip(users, items, labels):
            pos, negs = out.setdefault(int(u), [None, []])
            if label == 1:
                out[int(u)][0] = int(i)
            else:
                negs.append(int(i))
    return out


@pytest.mark.parametrize("protocol", ["market", "paper"])
def test_negatives_per_protocol(tiny_config, protocol):
    config = tiny_config(eval_protocol=protocol)
    dataset, built, (valid, test) = loaders(config)
    user_items = items_of_users(dataset)
    target_items = set(dataset.target_items.tolist())
    union_of_negatives = set()
    for loader in (valid, test):
        seen = candidates(loader)
        assert set(seen) == set(built[1].inter_feat["user_id"].numpy().tolist())
        for user, (positive, negatives) in seen.items():
            assert positive is not None and len(negatives) == config["eval_neg_num"]
            assert len(set(negatives)) == len(negatives)
            assert not set(negatives) & user_items[user], "a negative is one of the user's items"
            if protocol == "market":
                assert set(negatives) <= target_items
            union_of_negatives |= set(negatives)
    if protocol == "paper":
        assert union_of_negatives - target_items, "paper negatives come from all markets' items"


def test_negatives_are_fixed_and_seeded(tiny_config):
    first = candidates(loaders(tiny_config(eval_protocol="market"))[2][1])
    again = candidates(loaders(tiny_config(eval_protocol="market"))[2][1])
    other = candidates(loaders(tiny_config(eval_protocol="market", seed=7))[2][1])
    assert first == again
    assert first != other


def test_split_seed_alone_fixes_the_split_and_the_negatives(tiny_config):
    """Models trained with other seeds meet the same test users, items and negatives under one split_seed."""
    first = candidates(loaders(tiny_config(eval_protocol="market", seed=1, split_seed=5))[2][1])
    other_training_seed = candidates(loaders(tiny_config(eval_protocol="market", seed=2, split_seed=5))[2][1])
    other_split_seed = candidates(loaders(tiny_config(eval_protocol="market", seed=1, split_seed=6))[2][1])
    assert first == other_training_seed
    assert first != other_split_seed


def test_a_market_too_small_for_its_negatives_names_the_user_the_market_and_the_protocol(tiny_config):
    from recbole_cmr.utils import CrossMarketError

    with pytest.raises(CrossMarketError, match=r"only \d+ candidate negatives for user 'bb_u\d+' of market 'bb' "
                                               r"under eval_protocol market \(a pool of \d+ items .*40 needed"):
        loaders(tiny_config(eval_protocol="market", eval_neg_num=40))
    loaders(tiny_config(eval_protocol="paper", eval_neg_num=40))  # all markets' items are enough


def test_full_ranks_exactly_the_target_items(tiny_config):
    dataset, built, (valid, test) = loaders(tiny_config(eval_protocol="full"))
    target_items = set(dataset.target_items.tolist())
    history, lengths = dataset.train_history()
    for phase, loader in (("valid", valid), ("test", test)):
        for user_df, (hist_u, hist_i), positive_u, positive_i in loader:
            users = user_df["user_id"].numpy()
            masked = torch.zeros(len(users), dataset.item_num, dtype=torch.bool)
            masked[hist_u, hist_i] = True
            masked[:, 0] = True
            for row, user in enumerate(users):
                ranked = set(np.flatnonzero(~masked[row].numpy()).tolist())
                known = set(history[user, : lengths[user]].tolist())
                if phase == "test":
                    known |= set(built[1].inter_feat["item_id"][built[1].inter_feat["user_id"] == user].tolist())
                assert ranked == target_items - known
            assert set(positive_i.tolist()) <= target_items


@pytest.fixture
def toy_protocol():
    """A protocol added the way a contributor adds one: a single registered entry, here every other
    target-market item as the pool."""
    from recbole_cmr.data.protocol import PROTOCOLS, Protocol, register_protocol

    toy = register_protocol(Protocol("halfmarket", lambda dataset: dataset.target_items[::2], False,
                                     "eval_neg_num negatives from every other target-market item"))
    yield toy
    del PROTOCOLS[toy.name]


def test_a_registered_protocol_serves_the_config_the_runner_and_the_grid(tiny_config, tiny_root, tmp_path,
                                                                          toy_protocol):
    from recbole_cmr.compare import compare
    from recbole_cmr.quick_start import run

    config = tiny_config(eval_protocol="HalfMarket", eval_neg_num=5)
    assert config["eval_protocol"] == "halfmarket" and config["eval_args"]["mode"]["valid"] == "uni5"
    dataset, built, (valid, test) = loaders(config)
    pool = set(dataset.target_items[::2].tolist())
    for loader in (valid, test):
        presented = candidates(loader)
        assert presented and all(len(negs) == 5 and set(negs) <= pool for _, negs in presented.values())
    settings = {"dataset": "tiny", "data_path": tiny_root, "checkpoint_dir": str(tmp_path / "saved"),
                "eval_neg_num": 5, "state": "WARNING", "epochs": 1}
    _, rows = run("Pop", "bb", config_dict=settings, test_protocols=["halfmarket"])
    assert {r["protocol"] for r in rows} == {"market", "halfmarket"}
    out = compare(["Pop"], ["bb"], [1], "halfmarket", ["single"], str(tmp_path / "cmp"), settings,
                  test_protocols=["market"])
    assert "protocol `halfmarket`" in open(f"{out}/table.md").read()


def bucketed_epochs(tiny_config, epochs=2):
    """The positives' (user, item, user's history length) of each batch, over ``epochs`` epochs of ACMR's loader."""
    config = tiny_config("ACMR", embedding_size=8, n_heads=2, n_layers=1, train_batch_size=16, bucket_window=4)
    init_seed(config["seed"], True)
    dataset = CrossMarketDataset(config)
    train = data_preparation(config, dataset)[0]
    history = train.dataset.history_dataset.inter_feat["user_id"].numpy()
    lengths = torch.as_tensor(np.bincount(history, minlength=dataset.user_num))
    rows = sorted(zip(train.rows["user_id"].tolist(), train.rows["item_id"].tolist()))
    out = []
    for _ in range(epochs):
        batches = []
        for batch in train:
            positives = batch["label"] == 1
            users, items = batch["user_id"][positives], batch["item_id"][positives]
            batches.append(list(zip(users.tolist(), items.tolist(), lengths[users].tolist())))
        out.append(batches)
    return rows, out


def test_length_bucketed_batches_hold_every_row_once_per_epoch(tiny_config):
    rows, epochs = bucketed_epochs(tiny_config)
    for batches in epochs:
        assert sorted((u, i) for batch in batches for u, i, _ in batch) == rows
    assert epochs[0] != epochs[1], "each epoch draws another order"


@pytest.mark.xfail(strict=True, reason="known defect, measured in bench/README.md ('Length buckets'): the short last "
                                       "batch is shuffled among the others, so the loader's fixed-size slices after it "
                                       "straddle two buckets; fixing it changes every trained ACMR number")
def test_every_length_bucketed_batch_is_one_slice_of_a_sorted_window(tiny_config):
    _, epochs = bucketed_epochs(tiny_config, epochs=1)
    for batch in epochs[0]:
        lengths = [n for _, _, n in batch]
        assert lengths == sorted(lengths)
