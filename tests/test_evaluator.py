"""Fair evaluation: expected metrics over random order among ties, and untrained items ranked last."""

import os

import numpy as np
import pytest
import torch
from recbole.utils import init_seed

from recbole_cmr.data.dataset import CrossMarketDataset
from recbole_cmr.data.protocol import data_preparation, eval_dataloaders
from recbole_cmr.evaluator import expected_positions
from recbole_cmr.quick_start import CrossMarketRun, RunDirectory, run, training_items
from recbole_cmr.trainer import get_trainer

NOT_A_CANDIDATE = float("-inf")


def test_a_tied_positive_is_spread_evenly_over_its_block():
    scores = torch.tensor([[NOT_A_CANDIDATE, 0.0, 0.0, 0.0, 0.0],   # positive item 1 tied with three others
                           [NOT_A_CANDIDATE, 1.0, 2.0, 2.0, 3.0]])  # positive item 2: one better, one tied
    out = expected_positions(scores, torch.tensor([0, 1]), torch.tensor([1, 2]), None, 3)
    assert out[0].tolist() == [0.25, 0.25, 0.25, 1.0]  # rank 4 lies beyond k = 3
    assert out[1].tolist() == [0.0, 0.5, 0.5, 1.0]


def test_untrained_candidates_rank_below_every_trained_one_and_tie():
    scores = torch.tensor([[NOT_A_CANDIDATE, 0.1, 9.0, 0.5, 8.0]])
    trained = torch.tensor([False, True, False, True, False])
    # the positive (item 1) is beaten only by trained item 3, whatever the untrained items' scores
    assert expected_positions(scores, torch.tensor([0]), torch.tensor([1]), trained, 3)[0].tolist() == \
        [0.0, 1.0, 0.0, 1.0]
    # an untrained positive ties with the other untrained candidates behind the two trained ones
    out = expected_positions(scores, torch.tensor([0]), torch.tensor([2]), trained, 4)
    assert out[0].tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    # with the model's own scores it would be first
    assert expected_positions(scores, torch.tensor([0]), torch.tensor([2]), None, 1)[0].tolist() == [1.0, 1.0]


def test_items_that_are_not_candidates_never_count():
    scores = torch.tensor([[NOT_A_CANDIDATE, 0.0, NOT_A_CANDIDATE, 0.0]])
    assert expected_positions(scores, torch.tensor([0]), torch.tensor([1]), None, 3)[0].tolist() == \
        [0.5, 0.5, 0.0, 1.0]


@pytest.mark.parametrize("protocol", ["market", "paper", "full"])
def test_a_model_scoring_every_candidate_equally_gets_the_expected_metrics(tiny_config, protocol):
    """Pop with no counts yet scores every item 0: each metric is its expectation over a random order."""
    config = tiny_config("Pop", eval_protocol=protocol)
    init_seed(config["seed"], True)
    dataset = CrossMarketDataset(config)
    built = dataset.build()
    valid, _ = eval_dataloaders(config, dataset, built)
    model = config.model_class(config, built[0])
    model.max_cnt = torch.ones(1)  # set by training; every item_cnt is still 0
    trainer = get_trainer(config)(config, model)
    result = trainer.evaluate(valid, load_best_model=False)
    per_user = trainer.evaluator.last_per_user
    if protocol == "full":  # each user ranks the target items minus their known items
        n = np.array([len(dataset.target_items) - k for k in known_target_items(dataset, built)])
    else:
        n = np.full(len(per_user["recall@10"]), config["eval_neg_num"] + 1)
    ranks = np.arange(1, 11)
    np.testing.assert_allclose(per_user["recall@10"], np.minimum(10, n) / n)
    np.testing.assert_allclose(per_user["ndcg@10"], [np.sum(1 / np.log2(ranks[:min(10, m)] + 1)) / m for m in n])
    np.testing.assert_allclose(per_user["mrr@10"], [np.sum(1 / ranks[:min(10, m)]) / m for m in n])
    assert result["recall@10"] == pytest.approx(np.mean(np.minimum(10, n) / n), abs=1e-4)
    if protocol != "full":
        assert result["recall@10"] == pytest.approx(10 / 21, abs=1e-4)  # not 1 or 0 as item-id order would give


def test_a_trainer_without_a_log_file_writes_nothing_into_the_current_directory(tiny_config, tmp_path,
                                                                                 monkeypatch):
    """API and bench callers have no run directory: RecBole's ``./log_tensorboard`` must not appear."""
    config = tiny_config("Pop", epochs=1)
    init_seed(config["seed"], True)
    train, valid, _ = data_preparation(config, CrossMarketDataset(config))
    (tmp_path / "caller").mkdir()
    monkeypatch.chdir(tmp_path / "caller")
    trainer = get_trainer(config)(config, config.model_class(config, train.dataset))
    trainer.fit(train, valid, saved=False, verbose=False)
    assert os.listdir(tmp_path / "caller") == []


def known_target_items(dataset, built):
    """Per valid user (ascending id): how many target items the user already has (masked under full)."""
    history, lengths = dataset.train_history()
    target = set(dataset.target_items.tolist())
    users = np.unique(built[1].inter_feat["user_id"].numpy())
    return [len(set(history[u, :lengths[u]].tolist()) & target) for u in users]


def test_the_runner_ranks_against_the_items_of_every_training_phase(tiny_config, tmp_path):
    config = tiny_config("ACMR", train_markets="source", embedding_size=8, n_heads=2, n_layers=1, epochs=1)
    run_dir = RunDirectory(config)
    runner = CrossMarketRun(config, run_dir)
    runner.run(test_protocols=["market"])
    source = training_items(runner.built[0])
    target_train = runner.dataset.history_dataset.inter_feat
    target_train = target_train[target_train["market"] == runner.dataset.target_market_id]
    expected = source.clone()
    expected[target_train["item_id"]] = True
    assert torch.equal(runner.trained_items, expected)
    assert not torch.equal(source, expected), "the fixture's target market sells items no source market has"
    pretrained = torch.load(run_dir.file("pretrain.pth"), weights_only=True)
    assert torch.equal(pretrained["trained_items"], source)
    run_dir.discard()


def test_untrained_items_rule_reaches_the_run(tiny_settings):
    """EASE on the target's rows alone meets negatives of other markets it never trained on (they score 0):
    ranked last by default, they can no longer outrank a positive that scores below 0."""
    ndcg = {}
    for rule in ("last", "score"):
        _, rows = run("EASE", "bb", config_dict=tiny_settings(train_markets="target", eval_protocol="paper",
                                                               untrained_items=rule), saved=False)
        ndcg[rule] = [r["ndcg@10"] for r in rows]
    assert all(last > score for last, score in zip(ndcg["last"], ndcg["score"]))
