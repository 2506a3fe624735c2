"""Use a trained run: top-K items for the users it knows and for new users' histories.

``load_run(run_dir)`` rebuilds a finished run's config, split and model from its folder (as RecBole's
``load_data_and_model``; weights-only checkpoint, closed-form models such as EASE recomputed on the same
split); ``recommend(run, users, k)`` ranks a market's catalogue for known users (as ``full_sort_topk``),
``recommend_histories(run, histories, market, k)`` for users the run never saw, from their items alone.

The ranking follows the run's evaluation: the market's items are the candidates, the user's known items are
excluded (``keep_known`` keeps them), and with ``untrained_items: last`` items no training row of the model
held come after all others. A known user is scored as the model was trained, from the training split; the
user's valid and test items are held out of its input (give them in a history to use them).
"""

import collections
import csv
import json
import os
from dataclasses import dataclass

import numpy as np
import torch
from recbole.data.interaction import Interaction
from recbole.model.general_recommender import EASE, ItemKNN
from recbole.utils import ModelType, init_seed

from recbole_cmr.config import make_config
from recbole_cmr.data.dataset import atomic_files_digest, create_dataset
from recbole_cmr.quick_start import training_items
from recbole_cmr.trainer import load_checkpoint, load_state_dict
from recbole_cmr.utils import CrossMarketError, write_csv_rows, write_text

#: Checkpoints of a run folder, the one used first: the fine-tuned model, the one-phase model, the pre-trained one.
CHECKPOINTS = ("finetune.pth", "train.pth", "pretrain.pth")
#: config.json keys RecBole derives itself; passing them back would fix what a config recomputes.
DERIVED_KEYS = ("model", "dataset", "single_spec", "local_rank", "valid_neg_sample_args", "test_neg_sample_args")
#: Known users scored per model call.
USERS_PER_CALL = 256


@dataclass
class LoadedRun:
    """A finished run, ready to score: its folder, config, dataset (after the split), model and trained items."""

    path: str
    config: object
    dataset: object
    built: list
    model: torch.nn.Module
    trained_items: torch.Tensor  # bool per item id: in a training row of some phase the model learnt from


def load_run(run_dir):
    """Rebuild the run in ``run_dir`` (a folder written by ``run_recbole_cmr.py``) with its best checkpoint."""
    config_file = os.path.join(run_dir, "config.json")
    if not os.path.isfile(config_file):
        raise CrossMarketError(f"{run_dir} is not a run folder (no config.json); pass a folder printed as "
                               "'run directory: ...' by run_recbole_cmr.py")
    checkpoint_file = next((os.path.join(run_dir, name) for name in CHECKPOINTS
                            if os.path.isfile(os.path.join(run_dir, name))), None)
    if checkpoint_file is None:
        raise CrossMarketError(f"run folder {run_dir} has no checkpoint ({', '.join(CHECKPOINTS)}); "
                               "a comparison grid keeps its runs' checkpoints in <out>/runs/")
    try:
        with open(config_file, encoding="utf-8") as f:
            saved = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CrossMarketError(f"{config_file} is not valid JSON ({err}); a run folder's config.json is written by "
                               "run_recbole_cmr.py: rerun the model, or restore the file") from None
    missing = [k for k in ("model", "dataset", "target_market", "data_path")
               if not isinstance(saved, dict) or k not in saved]
    if missing:
        raise CrossMarketError(f"{config_file} lacks {', '.join(missing)}; a run folder's config.json is written "
                               "by run_recbole_cmr.py: rerun the model, or restore the file")
    config_dict = {k: v for k, v in saved.items() if k not in DERIVED_KEYS}
    config_dict["state"] = "WARNING"
    negatives = saved.get("train_neg_sample_args")
    if isinstance(negatives, dict) and negatives.get("distribution") == "none":  # RecBole's form of "no negatives"
        config_dict["train_neg_sample_args"] = None
    # RecBole stores data_path joined with the dataset name; the config takes the folder above it
    if os.path.basename(os.path.normpath(saved["data_path"])) == saved["dataset"]:
        config_dict["data_path"] = os.path.dirname(os.path.normpath(saved["data_path"]))
    config = make_config(saved["model"], saved["target_market"], config_dict={**config_dict,
                                                                                "dataset": saved["dataset"]})
    _check_same_data(run_dir, config)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    built = dataset.build()
    init_seed(config["seed"], config["reproducibility"])
    model = config.model_class(config, built[0]).to(config["device"])
    checkpoint = load_checkpoint(checkpoint_file, config)
    load_state_dict(model, checkpoint, checkpoint_file)
    model.load_other_parameter(checkpoint.get("other_parameter"))
    model.eval()
    trained = training_items(built[0])
    if checkpoint_file.endswith("finetune.pth"):  # fine-tuned on the target market's training rows as well
        history = dataset.history_dataset
        rows = history.inter_feat[dataset.market_field] == dataset.target_market_id
        trained |= training_items(history.copy(history.inter_feat[rows]))
    return LoadedRun(run_dir, config, dataset, built, model, trained)


def _check_same_data(run_dir, config):
    """Refuse a run whose atomic files changed since it was trained (``data.json``; older runs lack it)."""
    recorded_file = os.path.join(run_dir, "data.json")
    if not os.path.isfile(recorded_file):
        return
    try:
        with open(recorded_file, encoding="utf-8") as f:
            recorded = json.load(f)
    except ValueError as err:
        raise CrossMarketError(f"{recorded_file} is not valid JSON ({err}); a run folder's data.json is written by "
                               "run_recbole_cmr.py: restore it, or delete it to use the run unchecked") from None
    now = atomic_files_digest(config)
    changed = sorted(name for name in set(recorded) | set(now) if recorded.get(name) != now.get(name))
    if changed:
        raise CrossMarketError(f"the data changed since this run was trained ({', '.join(changed)} in "
                               f"{config['data_path']}); its model would score other rows than it learnt from: "
                               "restore the files or train again")


def _listed(names, most=5):
    return ", ".join(map(repr, names[:most])) + (" ..." if len(names) > most else "")


def _user_ids(run, users):
    """Internal ids of known users given by token (``in_A1B2``) or by raw id within the run's market."""
    dataset, market = run.dataset, run.config["target_market"]
    tokens = dataset.field2token_id[dataset.uid_field]
    ids, unknown = [], []
    for user in users:
        token = user if user in tokens else f"{market}_{user}"
        (ids.append(tokens[token]) if token in tokens else unknown.append(user))
    if unknown:
        example = market_users(run)[0]
        raise CrossMarketError(f"unknown user(s) {_listed(unknown)} ({len(unknown)} of {len(users)}); users of "
                               f"market {market!r} are given as in the data ({example!r}, or "
                               f"{example.split('_', 1)[-1]!r}); "
                               "for a user the run never saw, give the history instead")
    ids = np.asarray(ids, dtype=np.int64)
    foreign = ids[dataset.user_market[ids] != dataset.target_market_id]
    if len(foreign):
        raise CrossMarketError(f"user {dataset.id2token(dataset.uid_field, int(foreign[0]))!r} is not a user of the "
                               f"run's target market {market!r}; the run was selected and tested on that market only")
    return ids


def market_users(run):
    """Tokens of every user of the run's target market."""
    dataset = run.dataset
    ids = np.flatnonzero(dataset.user_market == dataset.target_market_id)
    return [dataset.id2token(dataset.uid_field, int(i)) for i in ids if i > 0]


def _known_user_scores(run, users):
    """``[len(users), item_num]`` scores of known users, as the model scores them in full ranking."""
    model, config = run.model, run.config
    scores = []
    for start in range(0, len(users), USERS_PER_CALL):
        chunk = torch.as_tensor(users[start:start + USERS_PER_CALL])
        if config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
            interaction = _valid_rows(run, chunk)  # the training items in date order, as for the valid item
        else:
            interaction = Interaction({config["USER_ID_FIELD"]: chunk})
        with torch.no_grad():
            scores.append(model.full_sort_predict(interaction.to(config["device"])).view(len(chunk), -1).cpu())
    return torch.cat(scores).float()


def _valid_rows(run, users):
    valid = run.built[1].inter_feat
    row_of = {int(u): i for i, u in enumerate(valid[run.config["USER_ID_FIELD"]].tolist())}
    return valid[torch.as_tensor([row_of[int(u)] for u in users])]


def _history_scores(run, history, market_id, candidates):
    """Scores of ``candidates`` for a new user with ``history`` (item ids) in market ``market_id``."""
    model, config = run.model, run.config
    own = getattr(model, "score_history", None)
    if own is not None:
        return own(history, market_id, candidates)
    if isinstance(model, EASE) or (isinstance(model, ItemKNN) and model.method == "item"):
        weights = model.item_similarity if isinstance(model, EASE) else model.w
        row = np.zeros((1, run.dataset.item_num), dtype=np.float32)
        row[0, history.numpy()] = 1.0
        return torch.from_numpy(np.asarray(row @ weights, dtype=np.float32).ravel())[candidates]
    if config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
        recent = history[-model.max_seq_length:]
        item_list = torch.zeros(1, model.max_seq_length, dtype=torch.int64)
        item_list[0, :len(recent)] = recent
        interaction = Interaction({model.ITEM_SEQ: item_list, model.ITEM_SEQ_LEN: torch.tensor([len(recent)])})
        return model.full_sort_predict(interaction).view(-1).float()[candidates]
    raise CrossMarketError(f"{config['model']} learns one vector per training user, so it cannot score a user it "
                           "never saw; recommend from a history with ACMR, CMRanker, M3Rec, EASE, ItemKNN, Pop or "
                           "a sequential model (SASRec), or retrain with the user's data")


def _top_k(scores, candidates, known, trained, k):
    """Top ``k`` candidates per row: known items removed, untrained ones after all trained ones."""
    scores = scores[:, candidates].clone()
    scores[known[:, candidates]] = float("nan")
    order = torch.argsort(scores.nan_to_num(float("-inf")), dim=1, descending=True, stable=True)
    if trained is not None:  # stable: untrained candidates keep their score order, after every trained one
        order = order.gather(1, torch.argsort((~trained[candidates])[order].to(torch.int8), dim=1, stable=True))
    removed = scores.isnan().gather(1, order)  # known items go last, then are cut
    order = order.gather(1, torch.argsort(removed.to(torch.int8), dim=1, stable=True))[:, :k]
    kept = ~scores.isnan().gather(1, order)
    items, values = candidates[order].tolist(), scores.gather(1, order).tolist()
    return [[(i, v) for i, v, keep in zip(row_items, row_values, row_kept) if keep]
            for row_items, row_values, row_kept in zip(items, values, kept.tolist())]


def _rows(run, user_tokens, tops):
    dataset = run.dataset
    return [{"user": user, "rank": rank, "item": dataset.id2token(dataset.iid_field, item), "score": round(score, 6)}
            for user, top in zip(user_tokens, tops) for rank, (item, score) in enumerate(top, 1)]


def _check_k(k):
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise CrossMarketError(f"k must be an integer >= 1, got {k!r}")


def _trained_mask(run):
    return run.trained_items if run.config["untrained_items"] == "last" else None


def recommend(run, users=None, k=10, keep_known=False):
    """Top-``k`` items of the run's target market for known users (tokens; None: every user of the market).

    Returns rows ``{user, rank, item, score}``, ``k`` per user (fewer where the market has fewer candidates).
    """
    _check_k(k)
    if users is not None and not list(users):
        raise CrossMarketError("no user given; pass at least one user of the run's market, or None for all")
    ids = _user_ids(run, market_users(run) if users is None else list(users))
    dataset = run.dataset
    repeated = sorted(int(u) for u, n in collections.Counter(int(u) for u in ids).items() if n > 1)
    if repeated:  # a repeat (a token and its raw id, say) would get a second, differently masked list
        raise CrossMarketError(f"user {dataset.id2token(dataset.uid_field, repeated[0])!r} is given more than once "
                               "(as a token or a raw id); give each user once")
    known = torch.zeros(len(ids), dataset.item_num, dtype=torch.bool)
    if not keep_known:
        feat = dataset.inter_feat
        row_of = {int(u): r for r, u in enumerate(ids)}
        all_users, all_items = feat[dataset.uid_field].numpy(), feat[dataset.iid_field].numpy()
        mine = np.isin(all_users, ids)
        known[[row_of[int(u)] for u in all_users[mine]], all_items[mine]] = True
    candidates = torch.as_tensor(dataset.target_items)
    tops = _top_k(_known_user_scores(run, ids), candidates, known, _trained_mask(run), k)
    return _rows(run, [dataset.id2token(dataset.uid_field, int(u)) for u in ids], tops)


def recommend_histories(run, histories, market=None, k=10, keep_known=False):
    """Top-``k`` items of ``market`` (default: the run's target) for new users: ``{name: [item tokens]}``."""
    _check_k(k)
    dataset = run.dataset
    market_id = dataset.market_id(market or run.config["target_market"])
    if not histories:
        raise CrossMarketError("no history given; pass at least one item per new user")
    tokens = dataset.field2token_id[dataset.iid_field]
    unknown = sorted({item for items in histories.values() for item in items if item not in tokens})
    if unknown:
        raise CrossMarketError(f"unknown item(s) {_listed(unknown)} in the history; items must be tokens of the "
                               "data the run was trained on")
    empty = [name for name, items in histories.items() if not items]
    if empty:
        raise CrossMarketError(f"new user {empty[0]!r} has an empty history; give at least one item")
    for name, items in histories.items():
        repeated = [item for item, n in collections.Counter(items).items() if n > 1]
        if repeated:  # the training data holds a (user, item) pair once; a repeat would be dropped unseen
            raise CrossMarketError(f"new user {name!r} lists item {repeated[0]!r} more than once; give each item once")
    markets = dataset.inter_feat[dataset.market_field].numpy()
    candidates = torch.as_tensor(np.unique(dataset.inter_feat[dataset.iid_field].numpy()[markets == market_id]))
    rows = []
    for name, items in histories.items():
        history = torch.as_tensor([tokens[item] for item in items], dtype=torch.int64)
        with torch.no_grad():
            scores = torch.zeros(1, dataset.item_num)
            scores[0, candidates] = _history_scores(run, history, market_id, candidates).float()
        known = torch.zeros(1, dataset.item_num, dtype=torch.bool)
        if not keep_known:
            known[0, history] = True
        rows += _rows(run, [name], _top_k(scores, candidates, known, _trained_mask(run), k))
    return rows


def read_histories(path):
    """New users' histories from a CSV file with a header naming ``user`` and ``item`` (comma or tab separated)."""
    if not os.path.isfile(path):
        raise CrossMarketError(f"history file {path} does not exist; give a CSV file with a 'user,item' header")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # a byte-order mark is not part of the header
            text = f.read()
    except UnicodeDecodeError as err:
        raise CrossMarketError(f"history file {path} is not UTF-8 text ({err}); save it as UTF-8") from None
    delimiter = "\t" if "\t" in text.partition("\n")[0] else ","
    lines = list(csv.reader(text.splitlines(), delimiter=delimiter))
    header = [h.strip().lower() for h in lines[0]] if lines else []
    if sorted(header) != ["item", "user"]:
        raise CrossMarketError(f"history file {path} needs a header with the columns user and item, once each and "
                               f"nothing else (a market is given by --market), got {header}")
    u, i = header.index("user"), header.index("item")
    histories = {}
    for number, fields in enumerate(lines[1:], 2):
        if not any(field.strip() for field in fields):
            continue
        if len(fields) != len(header) or not fields[u].strip() or not fields[i].strip():
            raise CrossMarketError(f"history file {path} line {number}: expected a user and an item in "
                                   f"{len(header)} fields, got {fields}")
        histories.setdefault(fields[u].strip(), []).append(fields[i].strip())
    if not histories:
        raise CrossMarketError(f"history file {path} has no rows; add one 'user,item' row per item")
    return histories


def write_recommendations(path, rows):
    """Recommendations as CSV or JSON (by the file's extension), written whole or not at all."""
    if path.lower().endswith(".json"):
        write_text(path, json.dumps(rows, indent=1) + "\n")
    else:
        write_csv_rows(path, rows, fields=["user", "rank", "item", "score"])
