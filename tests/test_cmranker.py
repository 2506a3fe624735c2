"""CMRanker: its ranker learns from training rows only, runs under every protocol, and is deterministic."""

import csv
import os

import numpy as np
import pytest
from recbole.utils import init_seed

from recbole_cmr.data.dataset import CrossMarketDataset
from recbole_cmr.model.cmranker import FEATURES, CMRanker
from recbole_cmr.quick_start import run
from recbole_cmr.utils import CrossMarketError

#: A ranker small enough for the tiny data.
SMALL = {"ranker_negatives": 10, "ranker_trees": 20, "ranker_min_leaf": 5}


def test_the_rankers_labels_are_training_rows_only(tiny_config):
    config = tiny_config("CMRanker", ranker_users_per_market=12)
    init_seed(config["seed"], True)
    dataset = CrossMarketDataset(config)
    train, valid, test = dataset.build()
    X = train.history_dataset.inter_matrix(form="csr")
    user_market = np.asarray(dataset.user_market)
    inner, held_out = CMRanker._inner_split(X, user_market, 12, np.random.default_rng(0))
    training = set(zip(*X.nonzero()))
    held_out_pairs = set(held_out.items())
    evaluated = {(int(u), int(i)) for part in (valid, test) for u, i in
                 zip(part.inter_feat[dataset.uid_field].numpy(), part.inter_feat[dataset.iid_field].numpy())}
    assert held_out_pairs <= training and not held_out_pairs & evaluated
    assert set(zip(*inner.nonzero())) == training - held_out_pairs  # the inner base scores never see the labels
    per_market = np.bincount(user_market[list(held_out)], minlength=user_market.max() + 1)
    assert per_market.max() == 12 and (per_market > 0).sum() == 3  # every market labels the ranker


def test_runs_under_every_protocol_and_the_same_seed_gives_the_same_numbers(tiny_settings):
    _, first = run("CMRanker", "bb", config_dict=tiny_settings(**SMALL), test_protocols=["full", "paper"], saved=False)
    _, second = run("CMRanker", "bb", config_dict=tiny_settings(**SMALL), test_protocols=["full", "paper"], saved=False)
    assert {r["protocol"] for r in first} == {"market", "full", "paper"}
    assert all(0 < r["ndcg@10"] <= 1 for r in first)
    assert first == second


def test_dropped_features_are_left_out_of_the_ranker(tiny_config):
    config = tiny_config("CMRanker", ranker_negatives=5, ranker_trees=5, ranker_min_leaf=5,
                         ranker_drop_features=["ease_all", "gfcf_all"])
    init_seed(config["seed"], True)
    dataset = CrossMarketDataset(config)
    model = CMRanker(config, dataset.build()[0])
    assert model.frame[0].shape[1] == len(FEATURES) - 2 == model.ranker.n_features_


def test_features_are_relative_to_the_users_market(tiny_config):
    config = tiny_config("CMRanker", ranker_negatives=5, ranker_trees=5, ranker_min_leaf=5)
    init_seed(config["seed"], True)
    dataset = CrossMarketDataset(config)
    train, _, _ = dataset.build()
    model = CMRanker(config, train)
    target_users = np.flatnonzero(np.asarray(dataset.user_market) == dataset.target_market_id)
    block = model.scores.features(model.target, target_users[:3])
    assert block.shape == (3, len(dataset.target_items), len(FEATURES))
    assert np.isfinite(block).all()


@pytest.mark.parametrize("overrides, message", [
    ({"ease_reg_all": 0}, "ease_reg_all must be a number > 0"),
    ({"ranker_negatives": 0}, "ranker_negatives must be an integer >= 1"),
    ({"ranker_leaves": 1.5}, "ranker_leaves must be an integer >= 2"),
    ({"ranker_drop_features": ["ease_all", "nope"]}, "ranker_drop_features must list some of"),
])
def test_impossible_hyper_parameters(tiny_settings, overrides, message):
    with pytest.raises(CrossMarketError, match=message):
        run("CMRanker", "bb", config_dict=tiny_settings(**{**SMALL, **overrides}))


def test_a_run_writes_the_rankers_gain_per_feature(tiny_settings):
    path, _ = run("CMRanker", "bb", config_dict=tiny_settings(**SMALL, ranker_drop_features=["history_len"]))
    with open(os.path.join(path, "feature_gain.csv")) as f:
        gains = list(csv.DictReader(f))
    assert [g["feature"] for g in gains] == [name for name in FEATURES if name != "history_len"]
    assert sum(float(g["gain"]) for g in gains) > 0 and os.path.getsize(os.path.join(path, "feature_gain.png")) > 5000
