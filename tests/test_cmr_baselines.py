"""Cross-market baselines: market-aware NeuMF, FOREC (fork after source pre-training), M3Rec (reconstruction)."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from recbole.utils import init_seed

from recbole_cmr.data.dataset import create_dataset
from recbole_cmr.model.m3rec import _scale
from recbole_cmr.quick_start import run
from recbole_cmr.utils import CrossMarketError


def tiny_dict(tiny_root, tmp_path, **overrides):
    return {"dataset": "tiny", "data_path": tiny_root, "checkpoint_dir": str(tmp_path / "saved"), "epochs": 2,
            "eval_neg_num": 20, "state": "WARNING", **overrides}


def built_model(tiny_config, model, **overrides):
    config = tiny_config(model, **overrides)
    init_seed(config["seed"], True)
    dataset = create_dataset(config)
    built = dataset.build()
    return config, dataset, built, config.model_class(config, built[0])


def test_market_aware_neumf_modulates_items_by_market(tiny_config):
    config, dataset, built, model = built_model(tiny_config, "MANeuMF")
    users = torch.tensor([dataset.token2id("user_id", "bb_u1"), dataset.token2id("user_id", "aa_u1")])
    items = torch.tensor([dataset.token2id("item_id", "i30")] * 2)
    model.eval()
    before = model(users, items)
    with torch.no_grad():
        model.market_mf_embedding.weight[dataset.market_id("bb")] *= 3.0
    after = model(users, items)
    assert after[0] != before[0], "the bb user's score depends on the bb market embedding"
    assert after[1] == before[1], "another market's user is untouched"


@pytest.mark.parametrize("protocol", ["market", "paper"])
def test_market_aware_neumf_end_to_end(tiny_root, tmp_path, protocol):
    _, rows = run("MANeuMF", "bb", config_dict=tiny_dict(tiny_root, tmp_path, eval_protocol=protocol))
    assert [r["split"] for r in rows] == ["valid", "test"] and rows[0]["train_markets"] == "all"
    assert all(0.0 <= r["ndcg@10"] <= r["recall@10"] <= 1.0 for r in rows)


def test_forec_pretrains_on_sources_then_forks_a_target_head(tiny_root, tmp_path, tiny_config):
    path, rows = run("FOREC", "bb", config_dict=tiny_dict(tiny_root, tmp_path, pretrain_max_epochs=2))
    assert [(r["phase"], r["split"]) for r in rows] == [("pretrain", "valid"), ("pretrain", "test"),
                                                        ("finetune", "valid"), ("finetune", "test")]
    pretrained = torch.load(f"{path}/pretrain.pth", weights_only=True)
    finetuned = torch.load(f"{path}/finetune.pth", weights_only=True)
    assert pretrained["epoch"] == 1, "without target valid, pre-training keeps its last epoch"
    assert not pretrained["state_dict"]["forked"] and finetuned["state_dict"]["forked"]
    for key, value in pretrained["state_dict"].items():
        if key.startswith("mlp_layers."):
            assert torch.equal(value, finetuned["state_dict"][key]), f"shared tower {key} is frozen"
    assert not torch.equal(pretrained["state_dict"]["target_head.0.weight"],
                           finetuned["state_dict"]["target_head.0.weight"])

    config, dataset, built, _ = built_model(tiny_config, "FOREC")
    markets = built[0].inter_feat["market"].numpy()
    assert len(markets) and dataset.market_id("bb") not in markets, "pre-training never sees the target"


def test_forec_fork_starts_from_the_shared_scores(tiny_config):
    _, dataset, built, model = built_model(tiny_config, "FOREC")
    model.eval()
    users, items = torch.arange(1, 6), torch.arange(1, 6)
    shared = model(users, items)
    model.start_finetune()
    assert torch.allclose(model(users, items), shared, atol=1e-6)
    assert not any(p.requires_grad for p in model.mlp_layers.parameters())
    assert model.user_mf_embedding.weight.requires_grad and model.target_head[0].weight.requires_grad


def test_m3rec_matches_the_full_closed_form(tiny_config):
    """Keeping only target-item rows gives the same B as solving over every item."""
    config, dataset, built, model = built_model(tiny_config, "M3Rec", target_reg_weight=3.0, inter_weight=0.4)
    history = dataset.history_dataset.inter_matrix(form="csr").toarray()
    history[history > 0] = 1.0
    target = np.asarray(dataset.target_items)
    markets = np.asarray(dataset.user_market)
    X = history[(markets == dataset.target_market_id) & (np.arange(len(markets)) > 0)]
    n, lam = X.shape[1], 3.0
    # the prior's target rows, embedded in a full matrix (other rows do not reach target users' scores)
    intra = model._ease_rows(sp.csr_matrix(history), config["reg_weight"], np.arange(n))
    inter = model._walk_rows(sp.csr_matrix(history), markets, np.arange(n), config["walk_steps"],
                             config["walk_restart"])
    prior_all = 0.6 * _scale(intra[target]) + 0.4 * _scale(inter[target])
    prior = np.zeros((n, n))
    prior[target] = prior_all
    P = np.linalg.inv(X.T @ X + lam * np.eye(n))
    B = P @ (X.T @ X + lam * prior)
    B -= P * (np.diag(B) / np.diag(P))
    assert np.allclose(np.diag(B), 0.0, atol=1e-8)
    assert np.allclose(model.item_weights, B[target], atol=1e-4)


def test_m3rec_keeps_a_zero_diagonal(tiny_config):
    _, _, _, model = built_model(tiny_config, "M3Rec")
    target = model.target_items
    assert np.allclose(model.item_weights[np.arange(len(target)), target], 0.0, atol=1e-5), "zero diagonal"


@pytest.mark.parametrize("protocol", ["paper", "full"])
def test_m3rec_end_to_end(tiny_root, tmp_path, protocol):
    _, rows = run("M3Rec", "bb", config_dict=tiny_dict(tiny_root, tmp_path, eval_protocol=protocol))
    assert [r["split"] for r in rows] == ["valid", "test"]
    assert all(0.0 < r["recall@10"] <= 1.0 for r in rows)


@pytest.mark.parametrize("model, overrides, message", [
    ("FOREC", {"train_markets": "all"}, "FOREC is a cross-market model that trains with train_markets: source"),
    ("MANeuMF", {"train_markets": "target"}, "cannot run with train_markets: target"),
    ("M3Rec", {"inter_weight": 1.5}, "inter_weight must be in"),
    ("KGAT", {}, "knowledge-graph files"),
    ("RaCT", {}, "RaCT trains in RecBole's own stages"),
    ("S3Rec", {}, "S3Rec trains in RecBole's own stages"),
])
def test_models_that_cannot_run_say_why(tiny_root, tmp_path, model, overrides, message):
    with pytest.raises(CrossMarketError, match=message):
        run(model, "bb", config_dict=tiny_dict(tiny_root, tmp_path, **overrides))
    assert not (tmp_path / "saved").exists() or not any((tmp_path / "saved").iterdir())
