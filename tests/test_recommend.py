"""Recommending from a saved run: known users, new users' histories, refused checkpoints, the command line."""

import csv
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from recbole_cmr.data.protocol import eval_dataloaders
from recbole_cmr.quick_start import run
from recbole_cmr.recommend import (
    _known_user_scores,
    load_run,
    market_users,
    read_histories,
    recommend,
    recommend_histories,
)
from recbole_cmr.trainer import get_trainer
from recbole_cmr.utils import CrossMarketError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {"ACMR": {"embedding_size": 8, "n_heads": 2, "n_layers": 1},
          "EASE": {"train_markets": "target"}, "ItemKNN": {}, "M3Rec": {}, "Pop": {}, "BPR": {},
          "SASRec": {"MAX_ITEM_LIST_LENGTH": 10}, "CMRanker": {"ranker_trees": 20}}


@pytest.fixture(scope="module")
def runs(tiny_root, tmp_path_factory):
    """One finished run per model on target market bb of the tiny data."""
    saved = tmp_path_factory.mktemp("runs")
    paths = {}
    for model, overrides in MODELS.items():
        config_dict = {"dataset": "tiny", "data_path": tiny_root, "checkpoint_dir": str(saved), "epochs": 2,
                       "eval_neg_num": 20, "state": "WARNING", "cmr_plots": False, **overrides}
        paths[model], _ = run(model, "bb", config_dict=config_dict)
    return paths


@pytest.mark.parametrize("model", list(MODELS))
def test_known_users_get_the_top_k_of_the_full_scores(runs, model):
    loaded = load_run(runs[model])
    users = market_users(loaded)
    assert len(users) == 20 and all(u.startswith("bb_") for u in users)
    rows = recommend(loaded, users[:5], k=4)
    # by hand: the model's full scores, the market's items, the user's items removed, untrained items last
    dataset = loaded.dataset
    ids = [dataset.token2id(dataset.uid_field, u) for u in users[:5]]
    scores = _known_user_scores(loaded, np.array(ids))
    feat = dataset.inter_feat
    for r, (user, uid) in enumerate(zip(users[:5], ids)):
        mine = set(feat[dataset.iid_field][feat[dataset.uid_field] == uid].tolist())
        ranked = sorted((i for i in dataset.target_items.tolist() if i not in mine),
                        key=lambda i: (not bool(loaded.trained_items[i]), -float(scores[r, i])))
        got = [row for row in rows if row["user"] == user]
        assert [row["rank"] for row in got] == [1, 2, 3, 4]
        expected = ranked[:4]
        got_items = [dataset.token2id(dataset.iid_field, row["item"]) for row in got]
        # equal scores may come in either order; the score lists must agree exactly
        assert [round(float(scores[r, i]), 6) for i in got_items] == [round(float(scores[r, i]), 6) for i in expected]
        assert not set(got_items) & mine


def test_keep_known_can_return_the_users_items(runs):
    loaded = load_run(runs["ItemKNN"])
    user = market_users(loaded)[0]
    dataset = loaded.dataset
    mine = set(dataset.inter_feat[dataset.iid_field][dataset.inter_feat[dataset.uid_field]
                                                       == dataset.token2id(dataset.uid_field, user)].tolist())
    everything = recommend(loaded, [user], k=len(dataset.target_items), keep_known=True)
    assert len(everything) == len(dataset.target_items)
    assert mine <= {dataset.token2id(dataset.iid_field, row["item"]) for row in everything}


@pytest.mark.parametrize("model", ["ACMR", "EASE", "ItemKNN", "M3Rec", "Pop", "CMRanker", "SASRec"])
def test_a_new_user_with_a_known_users_history_gets_that_users_scores(runs, model):
    """History models score from the items alone: a copy of a known user's training items scores as that user
    (for a sequential model, in the order it read them)."""
    loaded = load_run(runs[model])
    dataset, config = loaded.dataset, loaded.config
    user = market_users(loaded)[3]
    uid = dataset.token2id(dataset.uid_field, user)
    if model == "SASRec":  # its known user's sequence: the training items in date order, as for the valid item
        valid = loaded.built[1].inter_feat
        row = int(torch.nonzero(valid[dataset.uid_field] == uid)[0])
        items = valid["item_id_list"][row, :int(valid["item_length"][row])]
    else:
        train = loaded.built[0].inter_feat
        items = train[dataset.iid_field][train[dataset.uid_field] == uid]
    history = [dataset.id2token(dataset.iid_field, i) for i in items]
    known = recommend(loaded, [user], k=6, keep_known=True)
    new = recommend_histories(loaded, {"newcomer": history}, k=6, keep_known=True)
    assert [r["score"] for r in new] == pytest.approx([r["score"] for r in known], abs=1e-5)
    assert config["target_market"] == "bb"


@pytest.mark.parametrize("model", ["ACMR", "CMRanker"])
def test_a_new_users_items_are_excluded_and_other_markets_served(runs, model):
    loaded = load_run(runs[model])
    rows = recommend_histories(loaded, {"a": ["i30", "i31"], "b": ["i40"]}, market="CC", k=5)
    assert [r["user"] for r in rows] == ["a"] * 5 + ["b"] * 5
    assert not {"i30", "i31"} & {r["item"] for r in rows if r["user"] == "a"}
    cc_items = {f"i{i}" for i in range(30, 71)}
    assert {r["item"] for r in rows} <= cc_items


@pytest.mark.parametrize("call, message", [
    (lambda r: recommend(r, ["nobody"]), "unknown user(s) 'nobody'"),
    (lambda r: recommend(r, ["aa_u1"]), "is not a user of the run's target market 'bb'"),
    (lambda r: recommend(r, ["bb_u0", "u0"]), "user 'bb_u0' is given more than once"),
    (lambda r: recommend(r, k=0), "k must be an integer >= 1"),
    (lambda r: recommend_histories(r, {"x": ["i1", "zz"]}), "unknown item(s) 'zz'"),
    (lambda r: recommend_histories(r, {"x": []}), "new user 'x' has an empty history"),
    (lambda r: recommend_histories(r, {"x": ["i1"]}, market="qq"), "unknown market 'qq'"),
    (lambda r: recommend(r, []), "no user given"),
    (lambda r: recommend_histories(r, {"x": ["i20", "i21", "i20"]}), "new user 'x' lists item 'i20' more than once"),
])
def test_bad_requests_say_what_is_wrong(runs, call, message):
    with pytest.raises(CrossMarketError, match=None) as err:
        call(load_run(runs["EASE"]))
    assert message in str(err.value)


def test_models_with_a_vector_per_user_refuse_new_users(runs):
    with pytest.raises(CrossMarketError, match="BPR learns one vector per training user"):
        recommend_histories(load_run(runs["BPR"]), {"x": ["i20"]})


def test_sequential_models_take_the_history_in_order(runs):
    loaded = load_run(runs["SASRec"])
    first = recommend_histories(loaded, {"x": ["i20", "i25", "i30"]}, k=3)
    second = recommend_histories(loaded, {"x": ["i30", "i25", "i20"]}, k=3)
    assert len(first) == 3 and [r["score"] for r in first] != [r["score"] for r in second]


def test_a_foreign_or_missing_checkpoint_or_a_broken_config_is_refused(runs, tmp_path):
    forged = tmp_path / "forged"
    shutil.copytree(runs["BPR"], forged)
    other = torch.load(os.path.join(runs["ACMR"], "finetune.pth"), weights_only=True)
    torch.save(other, forged / "train.pth")
    with pytest.raises(CrossMarketError, match="belongs to another model or split"):
        load_run(str(forged))
    os.remove(forged / "train.pth")
    with pytest.raises(CrossMarketError, match="has no checkpoint"):
        load_run(str(forged))
    with pytest.raises(CrossMarketError, match="is not a run folder"):
        load_run(str(tmp_path))
    shutil.copy(os.path.join(runs["BPR"], "train.pth"), forged / "train.pth")
    for text, message in (("{not json", "is not valid JSON"), ("[1, 2]", "lacks model, dataset"),
                          ('{"model": "BPR"}', "lacks dataset, target_market, data_path")):
        (forged / "config.json").write_text(text)
        with pytest.raises(CrossMarketError, match=message):
            load_run(str(forged))


def _cli(*args, cwd):
    return subprocess.run([sys.executable, os.path.join(REPO, "run_recbole_cmr.py"), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_command_line_writes_csv_and_json(runs, tmp_path):
    out = _cli("--recommend", runs["EASE"], "--users", "bb_u0,u1", "--k", "3", "--out", "recs.csv", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    with open(tmp_path / "recs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["user"], r["rank"]) for r in rows] == [(u, str(k)) for u in ("bb_u0", "bb_u1") for k in (1, 2, 3)]
    (tmp_path / "h.csv").write_text("user,item\nnew1,i20\nnew1,i21\nnew2,i22\n")
    out = _cli("--recommend", runs["EASE"], "--histories", "h.csv", "--k", "2", "--out", "new.json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert [r["user"] for r in json.load(open(tmp_path / "new.json"))] == ["new1", "new1", "new2", "new2"]
    out = _cli("--recommend", runs["ACMR"], "--history", "i30,i31", "--market", "CC", "--k", "3", "--out", "cc.csv",
               cwd=tmp_path)  # a new user of another market: the same items as the library call
    assert out.returncode == 0, out.stderr
    with open(tmp_path / "cc.csv") as f:
        assert [(r["user"], r["item"]) for r in csv.DictReader(f)] == [
            ("new_user", r["item"]) for r in recommend_histories(load_run(runs["ACMR"]), {"x": ["i30", "i31"]},
                                                                 market="CC", k=3)]
    out = _cli("--recommend", runs["EASE"], "--all_users", "--k", "1", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.count("bb_u") == 20
    assert out.stderr == ""
    out = _cli("--recommend", runs["EASE"], "--users", "bb_u0", "--k", "1000", cwd=tmp_path)  # more than bb sells
    assert out.returncode == 0 and 1 < out.stdout.count("bb_u0") < 1000
    assert out.stderr.startswith("note: 1 of 1 user(s) got fewer than --k=1000 items"), out.stderr


@pytest.mark.parametrize("args, message", [
    (["--users", "bb_u0"], "--users is for --recommend"),
    (["--recommend", "RUN"], "give --users, --all_users, --history or --histories"),
    (["--recommend", "RUN", "--users", "bb_u0", "--all_users"], "give one of --users, --all_users"),
    (["--recommend", "RUN", "--users", "bb_u0", "--k", "x"], "--k must be an integer >= 1"),
    (["--recommend", "RUN", "--histories", "missing.csv"], "history file missing.csv does not exist"),
    (["--recommend", "RUN", "--history", "i20", "--out", "recs.txt"], "--out must end in .csv or .json"),
    (["--recommend", "RUN", "--users", "nobody"], "unknown user(s) 'nobody'"),
    (["--recommend", "RUN", "--users", ",,"], "--users has an empty name"),
    (["--recommend", "RUN", "--users", "bb_u0,,bb_u1"], "--users has an empty name"),  # not silently dropped
    (["--recommend", "RUN", "--history", "i20,,i21"], "--history has an empty name"),
])
def test_command_line_bad_requests(runs, tmp_path, args, message):
    args = [runs["EASE"] if a == "RUN" else a for a in args]
    (tmp_path / "bad.csv").write_text("user,item\nx,\n")
    out = _cli(*args, cwd=tmp_path)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "recs.txt").exists()


def test_output_that_cannot_be_written_is_one_line_and_a_closed_reader_is_quiet(runs, tmp_path):
    command = [sys.executable, os.path.join(REPO, "run_recbole_cmr.py"), "--recommend", runs["EASE"], "--all_users"]
    if os.path.exists("/dev/full"):  # a full disk behind ``>``
        with open("/dev/full", "w") as full:
            out = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
        assert out.returncode == 2 and out.stderr.splitlines() == [
            "error: cannot write or read standard output: No space left on device; free space where standard "
            "output goes"], out.stderr
    reader_gone = " ".join(shlex.quote(a) for a in command) + " | true; echo ${PIPESTATUS[0]}"  # as ``| head``
    out = subprocess.run(["bash", "-c", reader_gone], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == str(128 + signal.SIGPIPE) and out.stderr == "", out.stderr


def test_history_file_with_a_bad_row_names_its_line(runs, tmp_path):
    (tmp_path / "bad.csv").write_text("user,item\nx,i20\nx,\n")
    out = _cli("--recommend", runs["EASE"], "--histories", "bad.csv", cwd=tmp_path)
    assert out.returncode == 2 and "bad.csv line 3" in out.stderr, out.stderr
    (tmp_path / "latin.csv").write_bytes(b"user,item\nx,i2\xe9\n")
    with pytest.raises(CrossMarketError, match="is not UTF-8 text"):
        read_histories(str(tmp_path / "latin.csv"))
    (tmp_path / "bom.csv").write_bytes("\ufeffuser,item\nx,i20\n".encode())  # as spreadsheets save it
    assert read_histories(str(tmp_path / "bom.csv")) == {"x": ["i20"]}
    for header in ("user,item,market", "user,user,item"):  # a column that would be ignored
        (tmp_path / "extra.csv").write_text(f"{header}\nx,i20,cc\n")
        with pytest.raises(CrossMarketError, match="once each and nothing else"):
            read_histories(str(tmp_path / "extra.csv"))


def test_a_run_whose_data_changed_is_refused(tiny_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(os.path.join(tiny_root, "tiny"), data / "tiny")
    path, _ = run("EASE", "bb", config_dict={"dataset": "tiny", "data_path": str(data), "eval_neg_num": 20,
                                              "checkpoint_dir": str(tmp_path / "saved"), "state": "WARNING"})
    assert load_run(path).model is not None
    with open(data / "tiny" / "tiny.inter", "a") as f:
        f.write("bb_new\ti20\t5.0\t1\tbb\n")
    with pytest.raises(CrossMarketError, match="the data changed since this run was trained \\(tiny.inter"):
        load_run(path)


@pytest.mark.parametrize("model", ["ACMR", "EASE", "SASRec"])
def test_a_loaded_run_scores_its_test_users_as_the_run_did(runs, model):
    loaded = load_run(runs[model])
    _, test_data = eval_dataloaders(loaded.config, loaded.dataset, loaded.built)
    trainer = get_trainer(loaded.config)(loaded.config, loaded.model)
    trainer.eval_collector.trained_items = loaded.trained_items
    result = trainer.evaluate(test_data, load_best_model=False)
    with open(os.path.join(runs[model], "results.csv")) as f:
        saved = [r for r in csv.DictReader(f) if r["split"] == "test" and r["phase"] in ("train", "finetune")]
    assert float(saved[0]["ndcg@10"]) == pytest.approx(float(result["ndcg@10"]), abs=1e-6)


def test_onboarding_a_small_market(tiny_root, tmp_path):
    """The documented flow for a market with few users: pre-train on the other markets, fine-tune on what the
    new market has, then recommend to its users and to newcomers."""
    settings = {"dataset": "tiny", "data_path": tiny_root, "checkpoint_dir": str(tmp_path / "saved"), "epochs": 2,
                "eval_neg_num": 20, "state": "WARNING", "embedding_size": 8, "n_heads": 2, "n_layers": 1,
                "train_markets": "source", "cmr_plots": False}
    path, rows = run("ACMR", "cc", config_dict=settings, test_protocols=["full"])
    assert {(r["phase"], r["protocol"], r["split"]) for r in rows} >= {
        ("pretrain", "market", "test"), ("finetune", "market", "test"), ("pretrain", "full", "test")}
    pretrained = torch.load(os.path.join(path, "pretrain.pth"), weights_only=True)
    loaded = load_run(path)
    dataset = loaded.dataset
    markets = dataset.inter_feat[dataset.market_field].numpy()
    items = dataset.inter_feat[dataset.iid_field].numpy()
    cc = dataset.market_id("cc")
    ids = np.setdiff1d(items[markets == cc], items[markets != cc])  # sold in cc alone: pre-training never met them
    assert len(ids) and not pretrained["trained_items"][ids].any() and loaded.trained_items[ids].any()
    assert len(recommend(loaded, k=5)) == 5 * len(market_users(loaded))
    history = [dataset.id2token(dataset.iid_field, int(i)) for i in ids[:2]]
    newcomer = recommend_histories(loaded, {"newcomer": history}, k=5)
    assert {r["item"] for r in newcomer} <= {f"i{i}" for i in range(30, 71)} - set(history)
