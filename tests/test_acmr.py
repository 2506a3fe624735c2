"""ACMR: the model's invariances, the two-phase runner and its bad-input errors."""

import csv
import json
import os

import pytest
import torch
from recbole.data.interaction import Interaction
from recbole.utils import init_seed

from recbole_cmr.data.dataset import CrossMarketDataset
from recbole_cmr.data.protocol import data_preparation
from recbole_cmr.model.acmr import ACMR, Dropout
from recbole_cmr.quick_start import CrossMarketRun, RunDirectory, run
from recbole_cmr.utils import CrossMarketError


@pytest.fixture
def acmr(tiny_config):
    config = tiny_config("ACMR", embedding_size=8, n_heads=2, n_layers=2)
    init_seed(config["seed"], True)
    dataset = CrossMarketDataset(config)
    train, valid, test = data_preparation(config, dataset)
    model = ACMR(config, train.dataset)
    return model, train


def test_shapes_and_loss(acmr):
    model, train = acmr
    batch = next(iter(train))
    loss = model.calculate_loss(batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.item_embedding.weight.grad is not None
    model.eval()
    assert model.predict(batch).shape == (len(batch),)


def test_padding_and_history_order_do_not_change_a_score(acmr):
    model, _ = acmr
    model.eval()
    sequences = torch.tensor([[5, 7, 9, 11, 0], [6, 8, 0, 0, 0]])
    markets = torch.tensor([1, 2])
    with torch.no_grad():
        base = model._encode(sequences, markets)
        padded = model._encode(torch.cat([sequences, torch.zeros(2, 4, dtype=torch.long)], 1), markets)
        reordered = model._encode(torch.tensor([[5, 11, 9, 7, 0], [6, 0, 8, 0, 0]]), markets)
    assert torch.allclose(base, padded, atol=1e-5)
    assert torch.allclose(base, reordered, atol=1e-5)


def test_dropout_masks_keep_the_distribution():
    torch.manual_seed(0)
    dropout = Dropout(0.3)
    x = torch.ones(400, 500)
    y = dropout(x)
    assert abs(float((y == 0).float().mean()) - 0.3) < 0.005
    assert torch.allclose(y[y != 0], torch.tensor(1 / 0.7))
    assert abs(float(y.mean()) - 1.0) < 0.01
    dropout.eval()
    assert torch.equal(dropout(x), x)


def test_recomputed_wide_buckets_give_the_same_loss_and_gradients(acmr, monkeypatch):
    """Wide buckets of the PyTorch path recompute their layers in backward; with the RNG replayed nothing changes."""
    import recbole_cmr.model.acmr as acmr_module

    model, train = acmr
    model.fused = False  # the fused kernels store no attention maps, so they never recompute
    batch = next(iter(train))

    def loss_and_grads():
        torch.manual_seed(3)
        model.zero_grad()
        loss = model.calculate_loss(batch)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    stored_loss, stored_grads = loss_and_grads()
    calls = []
    original = acmr_module.checkpoint
    monkeypatch.setattr(acmr_module, "RECOMPUTE_ATTENTION_FLOATS", 0)
    monkeypatch.setattr(acmr_module, "checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k))
    recomputed_loss, recomputed_grads = loss_and_grads()
    assert calls, "every bucket is wide enough to be recomputed"
    assert torch.equal(stored_loss, recomputed_loss)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(stored_grads, recomputed_grads))


def test_bucketing_does_not_change_scores(acmr):
    model, train = acmr
    model.eval()
    batch = next(iter(train))
    with torch.no_grad():
        model.bucket_rows = 3
        small = model.predict(batch)
        model.bucket_rows = 4096
        large = model.predict(batch)
    assert torch.allclose(small, large, atol=1e-5)


def test_training_positive_never_sees_itself(acmr):
    model, train = acmr
    batch = next(iter(train))
    users, items, labels = batch["user_id"], batch["item_id"], batch["label"]
    n_pos = int(labels.sum())
    # RecBole's point-wise layout that calculate_loss relies on: negatives repeat their positive's user
    assert labels[:n_pos].all() and not labels[n_pos:].any()
    rows = torch.arange(len(users))
    assert torch.equal(users, users[rows % n_pos])
    positives = items[rows % n_pos]
    history = model._histories(users, exclude=positives)
    assert not (history == positives.unsqueeze(1)).any()
    kept = model._histories(users[:n_pos])  # released behaviour: the positive is in its own history
    assert (kept == items[:n_pos].unsqueeze(1)).any(1).all()
    # and calculate_loss asks for exactly that exclusion, unless history_keeps_positive is set
    calls = []
    histories = model._histories
    model._histories = lambda users, exclude=None: calls.append(exclude) or histories(users, exclude)
    model.calculate_loss(batch)
    model.history_keeps_positive = True
    model.calculate_loss(batch)
    assert torch.equal(calls[0], positives) and calls[1] is None


def test_long_histories_keep_a_subset(tiny_config):
    config = tiny_config("ACMR", embedding_size=8, n_heads=2, n_layers=1, max_history_len=2)
    init_seed(config["seed"], True)
    dataset = CrossMarketDataset(config)
    train, _, _ = data_preparation(config, dataset)
    model = ACMR(config, train.dataset).eval()
    users = torch.arange(1, dataset.user_num)
    first, second = model._histories(users), model._histories(users)
    assert first.shape[1] == 2 and torch.equal(first, second)
    full, lengths = dataset.train_history()
    for u, row in zip(users.tolist(), first.tolist()):
        assert set(row) - {0} <= set(full[u, : lengths[u]].tolist())


def tiny_acmr_dict(tiny_root, tmp_path, **overrides):
    config = {"dataset": "tiny", "data_path": tiny_root, "checkpoint_dir": str(tmp_path / "saved"), "epochs": 2,
              "eval_neg_num": 20, "state": "WARNING", "embedding_size": 8, "n_heads": 2, "n_layers": 1}
    config.update(overrides)
    return config


def test_two_phase_run_writes_its_directory(tiny_root, tmp_path):
    scores = []
    path, rows = run("ACMR", "BB", config_dict=tiny_acmr_dict(tiny_root, tmp_path, state="INFO"),
                     test_protocols=["market", "paper", "full"],
                     callback_fn=lambda phase, epoch, score, passes: scores.append((phase, score)))
    assert os.path.isdir(path) and not path.endswith(".incomplete")
    assert sorted(os.listdir(path)) == ["attention.png", "config.json", "data.json", "finetune.pth", "item_map.png",
                                        "learning_curves.csv", "learning_curves.png", "per_user_test.npz",
                                        "pretrain.pth", "results.csv", "results.json", "run.log", "tensorboard"]
    assert all(os.path.getsize(os.path.join(path, f"{name}.png")) > 10_000
               for name in ("attention", "item_map", "learning_curves"))
    with open(os.path.join(path, "learning_curves.csv")) as f:
        curves = list(csv.DictReader(f))
    for phase in ("pretrain", "finetune"):
        epochs = [r for r in curves if r["phase"] == phase]
        assert [int(r["epoch"]) for r in epochs] == list(range(len(epochs)))
        assert sum(r["selected"] == "True" for r in epochs) == 1 and all(r["ndcg@5"] for r in epochs)
        assert all(float(r["train_seconds"]) > 0 for r in epochs)  # time per epoch, for the sensitivity study
    assert os.listdir(tmp_path / "saved") == [os.path.basename(path)]
    assert {(r["phase"], r["protocol"], r["split"]) for r in rows} == {
        (ph, pr, sp) for ph in ("pretrain", "finetune") for pr in ("market", "paper", "full")
        for sp in ("valid", "test")}
    results = json.load(open(os.path.join(path, "results.json")))
    assert results["protocol"] == "market" and results["seed"] == 2020
    assert results["torch_threads"] == 1  # the default: a fixed count, since the numbers depend on it
    pretrain_scores = [s for phase, s in scores if phase == "pretrain"]
    checkpoint = torch.load(os.path.join(path, "pretrain.pth"), weights_only=True)
    assert checkpoint["best_valid_score"] == pytest.approx(max(pretrain_scores))
    assert "ACMR on target market BB | protocol: full, market, paper | seed 2020" in open(
        os.path.join(path, "run.log")).read()


def test_attention_rows_are_the_candidates_weights_on_the_history(acmr):
    model, _ = acmr
    model.eval()
    user = int(torch.nonzero(model.user_market == model.user_market[1])[0])
    candidates = model.target_items[:4]
    with torch.no_grad():
        weights, history, scores = model.attention_to_history(torch.tensor(user), candidates)
        expected = model.predict(Interaction({model.USER_ID: torch.full((4,), user), model.ITEM_ID: candidates}))
    assert weights.shape == (4, len(history)) and bool((weights > 0).all()) and bool((weights.sum(1) < 1).all())
    assert scores == pytest.approx(expected, abs=1e-5)


def test_no_pictures_when_switched_off(tiny_root, tmp_path):
    path, _ = run("ACMR", "bb", config_dict=tiny_acmr_dict(tiny_root, tmp_path, epochs=1, cmr_plots=False))
    assert not [name for name in os.listdir(path) if name.endswith(".png")]


def test_finetune_starts_from_best_pretrained_weights(tiny_root, tmp_path):
    path, _ = run("ACMR", "bb", config_dict=tiny_acmr_dict(tiny_root, tmp_path), phase="pretrain")
    pretrained = os.path.join(path, "pretrain.pth")
    assert not os.path.exists(os.path.join(path, "finetune.pth"))
    from recbole_cmr.config import make_config

    config = make_config("ACMR", "bb", config_dict=tiny_acmr_dict(tiny_root, tmp_path))
    runner = CrossMarketRun(config, RunDirectory(config))
    runner._load_pretrained(pretrained)
    saved = torch.load(pretrained, weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in runner.model.state_dict().items())
    runner.run_dir.discard()
    # and the main path fine-tunes from it
    path2, rows = run("ACMR", "bb", config_dict=tiny_acmr_dict(tiny_root, tmp_path), phase="finetune",
                      pretrained=pretrained)
    assert {r["phase"] for r in rows} == {"finetune"}


def test_finetuning_from_a_saved_pretraining_gives_the_two_phase_numbers(tiny_root, tmp_path):
    """The pre-training checkpoint carries the generators' state at which the run's fine-tuning started."""
    path, both = run("ACMR", "bb", config_dict=tiny_acmr_dict(tiny_root, tmp_path))
    _, resumed = run("ACMR", "bb", config_dict=tiny_acmr_dict(tiny_root, tmp_path), phase="finetune",
                     pretrained=os.path.join(path, "pretrain.pth"))
    assert resumed == [r for r in both if r["phase"] == "finetune"]


def test_same_seed_same_metrics(tiny_root, tmp_path):
    _, first = run("ACMR", "bb", config_dict=tiny_acmr_dict(tiny_root, tmp_path, seed=3), saved=False)
    _, second = run("ACMR", "bb", config_dict=tiny_acmr_dict(tiny_root, tmp_path, seed=3), saved=False)
    assert first == second


def test_more_test_protocols_change_no_selection(tiny_root, tmp_path):
    """Selection stays on the configured protocol's valid set: extra test protocols only add rows."""
    _, alone = run("ACMR", "bb", config_dict=tiny_acmr_dict(tiny_root, tmp_path, epochs=3), saved=False)
    _, more = run("ACMR", "bb", config_dict=tiny_acmr_dict(tiny_root, tmp_path, epochs=3), saved=False,
                  test_protocols=["full", "paper"])
    assert [r for r in more if r["protocol"] == "market"] == alone
    assert {r["protocol"] for r in more} == {"market", "full", "paper"}


def test_without_market_embedding_the_market_changes_no_score(tiny_config):
    config = tiny_config("ACMR", embedding_size=8, n_heads=2, n_layers=1, use_market_embedding=False)
    init_seed(config["seed"], True)
    dataset = CrossMarketDataset(config)
    model = ACMR(config, data_preparation(config, dataset)[0].dataset).eval()
    assert model.market_embedding is None and not any("market_embedding" in k for k in model.state_dict())
    sequences = torch.tensor([[5, 7, 9], [5, 7, 9]])
    with torch.no_grad():
        scores = model._encode(sequences, torch.tensor([1, 2]))
    assert torch.equal(scores[0], scores[1])


def test_ablation_switches(tiny_root, tmp_path):
    _, rows = run("ACMR", "bb", config_dict=tiny_acmr_dict(tiny_root, tmp_path, finetune=False,
                                                           use_market_embedding=False), saved=False)
    assert {r["phase"] for r in rows} == {"train"}
    _, rows = run("ACMR", "bb", config_dict=tiny_acmr_dict(tiny_root, tmp_path, train_markets="source"),
                  saved=False)
    assert {r["phase"] for r in rows} == {"pretrain", "finetune"}


@pytest.mark.parametrize("overrides, message", [
    ({"n_heads": 3}, "n_heads \\(3\\) must be a positive divisor of embedding_size \\(8\\)"),
    ({"max_history_len": 0}, "max_history_len \\(SL\\) must be an integer >= 1"),
    ({"learning_rate": 0}, "learning_rate must be a number > 0"),
    ({"dropout_prob": 1.5}, "dropout_prob must be a number in \\[0, 1\\)"),
])
def test_impossible_hyper_parameters(tiny_root, tmp_path, overrides, message):
    with pytest.raises(CrossMarketError, match=message):
        run("ACMR", "bb", config_dict=tiny_acmr_dict(tiny_root, tmp_path, **overrides))
    assert not os.path.exists(tmp_path / "saved") or os.listdir(tmp_path / "saved") == []


def test_bad_pretrained_files(tiny_root, tmp_path):
    with pytest.raises(CrossMarketError, match="does not exist"):
        run("ACMR", "bb", config_dict=tiny_acmr_dict(tiny_root, tmp_path), pretrained=str(tmp_path / "nope.pth"))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x04not a checkpoint")
    with pytest.raises(CrossMarketError, match="cannot be read"):
        run("ACMR", "bb", config_dict=tiny_acmr_dict(tiny_root, tmp_path), pretrained=str(corrupt))
    path, _ = run("ACMR", "bb", config_dict=tiny_acmr_dict(tiny_root, tmp_path, epochs=1), phase="pretrain")
    with pytest.raises(CrossMarketError, match="belongs to another model or split .*split_seed"):
        run("ACMR", "bb", config_dict=tiny_acmr_dict(tiny_root, tmp_path, seed=99),
            pretrained=os.path.join(path, "pretrain.pth"))
    assert os.listdir(tmp_path / "saved") == [os.path.basename(path)]
