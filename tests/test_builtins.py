"""RecBole built-ins on the cross-market split, and the stack breakages we handle."""

import os
import subprocess
import sys
import time

import pytest
import torch
from recbole.trainer import Trainer
from recbole.utils import init_seed

from recbole_cmr import utils
from recbole_cmr.data.dataset import CrossMarketDataset
from recbole_cmr.data.protocol import data_preparation
from recbole_cmr.quick_start import run
from recbole_cmr.trainer import get_trainer
from recbole_cmr.utils import choose_threads, get_model


def tiny_run(tiny_root, tmp_path, model, **overrides):
    config_dict = {"dataset": "tiny", "data_path": tiny_root, "checkpoint_dir": str(tmp_path / "saved"),
                   "epochs": 2, "eval_neg_num": 20, "state": "WARNING"}
    config_dict.update(overrides)
    return run(model, "bb", config_dict=config_dict)


@pytest.mark.parametrize("protocol", ["paper", "market", "full"])
@pytest.mark.parametrize("model", ["Pop", "BPR"])
def test_builtin_end_to_end(tiny_root, tmp_path, model, protocol):
    path, rows = tiny_run(tiny_root, tmp_path, model, eval_protocol=protocol)
    assert {(r["phase"], r["split"], r["protocol"]) for r in rows} == {("train", "valid", protocol),
                                                                      ("train", "test", protocol)}
    for r in rows:
        assert 0.0 <= r["ndcg@10"] <= r["recall@10"] <= 1.0
        assert r["recall@5"] <= r["recall@10"]


@pytest.mark.parametrize("train_markets, negatives", [
    ("target", None), ("all", None), ("target", {"distribution": "uniform", "sample_num": 1}),
])
def test_pop_counts_every_training_interaction_of_its_scope(tiny_config, train_markets, negatives):
    """RecBole's Pop adds one per distinct item per batch and counts sampled negatives; ours counts rows."""
    from recbole.model.general_recommender import Pop as RecBolePop

    config = tiny_config("Pop", train_markets=train_markets, train_batch_size=64, train_neg_sample_args=negatives)
    init_seed(config["seed"], True)
    dataset = CrossMarketDataset(config)
    train, valid, _ = data_preparation(config, dataset)
    rows = train.dataset.inter_feat
    assert set(rows[dataset.market_field].tolist()) == (
        {dataset.field2token_id[dataset.market_field]["bb"]} if train_markets == "target"
        else set(range(1, len(dataset.field2id_token[dataset.market_field]))))
    counts = torch.bincount(rows[dataset.iid_field], minlength=dataset.item_num)

    model = get_model("Pop")(config, train.dataset)
    get_trainer(config)(config, model).fit(train, valid, saved=False)
    assert torch.equal(model.item_cnt.squeeze(-1), counts)

    stock = RecBolePop(config, train.dataset)  # the breakage, under the same loader
    get_trainer(config)(config, stock).fit(train, valid, saved=False)
    assert stock.item_cnt.max() < counts.max()


def test_lightgcn_builds_its_graph(tiny_root, tmp_path):
    """scipy >= 1.13 removed dok_matrix._update, which LightGCN's graph building calls (pinned scipy 1.12)."""
    _, rows = tiny_run(tiny_root, tmp_path, "LightGCN", epochs=1)
    assert rows[1]["split"] == "test"


def test_model_lookup_keeps_autograd_anomaly_detection_as_it_was():
    """RecBole's sequential package (sine.py) turns anomaly detection on at import: 1.5-2x slower training.

    A fresh interpreter, since any earlier import of that package in this one would hide the first check."""
    check = ("import torch; from recbole_cmr.utils import get_model; "
             "assert get_model('SASRec').__name__ == 'SASRec'; assert not torch.is_anomaly_enabled()")
    assert subprocess.run([sys.executable, "-c", check], capture_output=True, timeout=300).returncode == 0
    torch.autograd.set_detect_anomaly(True)
    try:
        assert get_model("Pop").__name__ == "Pop"
        assert torch.is_anomaly_enabled()
    finally:
        torch.autograd.set_detect_anomaly(False)


def test_auto_threads_take_idle_cores_up_to_omp_num_threads(monkeypatch):
    monkeypatch.setattr(utils, "_busy_cores_of_other_processes", lambda: 0.0)  # an idle machine
    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert choose_threads("auto") == cores
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert choose_threads("auto") == 1
    assert choose_threads(3) == 3  # a number is taken as given


def test_auto_threads_leave_the_cores_that_other_processes_keep_busy(monkeypatch):
    """Real busy processes, one per core: ``auto`` must then take a single thread."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        time.sleep(0.5)  # past their start-up
        assert utils._busy_cores_of_other_processes() > cores - 0.5
        assert choose_threads("auto") == 1
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def test_checkpoints_load_with_weights_only(tiny_config, tmp_path):
    config = tiny_config("BPR", epochs=1)
    init_seed(config["seed"], True)
    dataset = CrossMarketDataset(config)
    train, valid, test = data_preparation(config, dataset)
    model = get_model("BPR")(config, train.dataset)

    stock = Trainer(config, model)
    stock.saved_model_file = str(tmp_path / "stock.pth")
    stock._save_checkpoint(0, verbose=False)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(stock.saved_model_file, weights_only=True)  # the breakage: RecBole pickles its Config

    trainer = get_trainer(config)(config, model)
    trainer.saved_model_file = str(tmp_path / "ours.pth")
    trainer.fit(train, valid, saved=True)
    checkpoint = torch.load(trainer.saved_model_file, weights_only=True)
    assert checkpoint["config"]["model"] == "BPR" and checkpoint["config"]["target_market"] == "bb"
    best = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    result = trainer.evaluate(test, load_best_model=True)  # RecBole's own loading path
    assert all(torch.equal(best[k], v) for k, v in model.state_dict().items())
    assert "ndcg@10" in result
    trainer.resume_checkpoint(trainer.saved_model_file)
    assert trainer.start_epoch == checkpoint["epoch"] + 1


@pytest.mark.parametrize("model, protocol", [
    ("ItemKNN", "market"), ("NeuMF", "paper"), ("EASE", "full"), ("WideDeep", "market"), ("WideDeep", "full"),
    ("SASRec", "full"), ("SASRec", "market"), ("BERT4Rec", "paper"),
])
def test_more_builtins_end_to_end(tiny_root, tmp_path, model, protocol):
    _, rows = tiny_run(tiny_root, tmp_path, model, eval_protocol=protocol, epochs=1)
    assert [r["split"] for r in rows] == ["valid", "test"]
    assert all(0.0 <= r["ndcg@10"] <= 1.0 for r in rows)


def test_sequential_rows_follow_the_split_in_date_order(tiny_config):
    from recbole_cmr.data.dataset import create_dataset

    config = tiny_config("SASRec")
    init_seed(config["seed"], True)
    dataset = create_dataset(config)
    train, valid, test = dataset.build()
    plain = {(int(u), int(i)): float(t) for u, i, t in zip(dataset.inter_feat["user_id"].numpy(),
                                                             dataset.inter_feat["item_id"].numpy(),
                                                             dataset.inter_feat["timestamp"].numpy())}
    history, lengths = dataset.train_history()
    valid_item = dict(zip(valid.inter_feat["user_id"].tolist(), valid.inter_feat["item_id"].tolist()))
    for part, extra in ((valid, False), (test, True)):
        for u, i, seq, n in zip(part.inter_feat["user_id"].tolist(), part.inter_feat["item_id"].tolist(),
                                part.inter_feat["item_id_list"].tolist(), part.inter_feat["item_length"].tolist()):
            seq = seq[:n]
            expected = set(history[u, : lengths[u]].tolist()) | ({valid_item[u]} if extra else set())
            assert set(seq) == expected and i not in seq
            times = [plain[(u, s)] for s in seq]
            assert times == sorted(times), "histories are in date order"
    test_pairs = set(zip(test.inter_feat["user_id"].tolist(), test.inter_feat["item_id"].tolist()))
    for u, i, seq in zip(train.inter_feat["user_id"].tolist(), train.inter_feat["item_id"].tolist(),
                         train.inter_feat["item_id_list"].tolist()):
        assert (u, i) not in test_pairs and not any((u, s) in test_pairs for s in seq)
        assert (u, valid_item.get(u)) != (u, i)


@pytest.mark.parametrize("model", ["SASRec", "BERT4Rec"])
def test_sequential_candidates_score_as_recbole_predicts_them(tiny_config, model):
    """One full-sort pass per user gives exactly the candidate scores RecBole's per-row predict gives."""
    from recbole_cmr.data.dataset import create_dataset

    config = tiny_config(model, eval_protocol="market")
    init_seed(config["seed"], True)
    train, valid, _ = data_preparation(config, create_dataset(config))
    model = get_model(model)(config, train.dataset).eval()
    ours, stock = get_trainer(config)(config, model), Trainer(config, model)
    ours.tot_item_num = stock.tot_item_num = valid.dataset.item_num  # set by evaluate() in RecBole
    for batch in valid:
        _, fast, _, _ = ours._neg_sample_batch_eval(batch)
        _, slow, _, _ = stock._neg_sample_batch_eval(batch)
        assert torch.isfinite(fast).sum() == len(batch[0]) and torch.equal(torch.isinf(fast), torch.isinf(slow))
        assert torch.allclose(fast[torch.isfinite(fast)], slow[torch.isfinite(slow)], atol=1e-5)
