"""CMRanker: a cross-market learning-to-rank model over closed-form item-item scores.

Two stages, as the strongest WSDM Cup 2022 cross-market teams built them (scores of several item-CF
models combined by a ranking model), written for this plugin's split:

1. Base scores of a (user, candidate) pair, all closed-form, all from training rows only:
   EASE over every market's training rows and EASE over the target market's alone; the linear filter of
   GF-CF (degree-normalised item co-occurrence) over every market; raw co-occurrence of the candidate with
   the user's items in the target market and, summed, in the other markets; the candidate's popularity in
   the target market and overall, the number of markets selling it; the user's history length.
2. A LightGBM LambdaRank model orders the candidates of a user by these features. Its labels come from
   an inner split of the *training* data: one random training item is held out for (at most
   ``ranker_users_per_market``) users of every market (seeded), the base scores are fitted on the rest,
   and the held-out item must outrank random items of the user's market that the user has not bought
   (as the protocols draw negatives). Valid and test rows are never features or labels; the base scores
   are then refitted on all training rows for evaluation.

LightGBM, because its LambdaRank optimises NDCG directly per user group, trains in seconds on these
frames on one CPU thread, and is deterministic with ``deterministic=True`` and a seed.
"""

import os

import lightgbm
import numpy as np
import scipy.sparse as sp
import torch
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType, ModelType

from recbole_cmr.model.abstract_recommender import CrossMarketModel
from recbole_cmr.utils import CrossMarketError, write_csv_rows

FEATURES = ("ease_all", "ease_own", "gfcf_all", "cooc_own", "cooc_others", "log_pop_own", "log_pop_all",
            "markets_selling", "history_len")


def _binary(matrix):
    matrix = matrix.tocsr().astype(np.float64)
    matrix.data[:] = 1.0
    return matrix


def _ease(X, reg_weight):
    """EASE's item-item matrix of the items ``X`` has columns for (dense, zero diagonal)."""
    gram = (X.T @ X).toarray()
    gram[np.diag_indices_from(gram)] += reg_weight
    inverse = np.linalg.inv(gram)
    weights = -inverse / np.diag(inverse)
    np.fill_diagonal(weights, 0.0)
    return weights.astype(np.float32)


class BaseScores:
    """The closed-form scorers fitted on one set of training rows (the inner split, or all training rows).

    Market-independent parts are fitted once; :meth:`for_market` adds a market's own EASE, co-occurrence and
    popularity, so the features of a user are always relative to the user's own market.
    """

    def __init__(self, X, user_market, reg_all, reg_own):
        self.X = _binary(X)
        self.user_market = user_market
        self.reg_own = reg_own
        self.ease_all = _ease(self.X, reg_all)  # all items x all items
        users_deg = np.asarray(self.X.sum(1)).ravel()
        items_deg = np.asarray(self.X.sum(0)).ravel()
        normalised = (sp.diags(1 / np.sqrt(np.maximum(users_deg, 1))) @ self.X
                      @ sp.diags(1 / np.sqrt(np.maximum(items_deg, 1))))
        self.gfcf = (normalised.T @ normalised).tocsr()
        self.cooc_all = (self.X.T @ self.X).tocsr()
        self.log_pop_all = np.log1p(items_deg)
        rows, columns = self.X.nonzero()
        sold = sp.csr_matrix((np.ones(len(rows)), (user_market[rows], columns)),
                             shape=(user_market.max() + 1, self.X.shape[1]))
        self.markets_selling = np.asarray((sold > 0).sum(0)).ravel()
        self.markets = {}

    def for_market(self, market, items):
        """Fit (once) the parts of ``market`` whose candidates are ``items``."""
        if market not in self.markets:
            users = self.user_market == market
            X_own = self.X[users][:, items].tocsr()
            cooc_own = (X_own.T @ X_own).tocsr()
            self.markets[market] = {
                "items": items, "row": np.cumsum(users) - 1, "X_own": X_own, "ease_own": _ease(X_own, self.reg_own),
                "cooc_own": cooc_own, "cooc_others": (self.cooc_all[:, items][items] - cooc_own).tocsr(),
                "log_pop_own": np.log1p(np.asarray(X_own.sum(0)).ravel()),
                # the market's columns, cut once: cutting them per batch of users would dominate full ranking
                "ease_all": np.ascontiguousarray(self.ease_all[:, items]), "gfcf": self.gfcf[:, items].tocsr(),
                "log_pop_all": self.log_pop_all[items], "markets_selling": self.markets_selling[items]}
        return self.markets[market]

    def features(self, market, users):
        """``[len(users), len(items), len(FEATURES)]`` features of every item of ``market`` for its ``users``."""
        part = self.markets[market]
        return self.features_of_rows(market, self.X[users], part["X_own"][part["row"][users]])

    def features_of_rows(self, market, rows_all, rows_own):
        """The same for users given by their binary item rows: all items, and the market's items only."""
        part = self.markets[market]
        n, m = rows_all.shape[0], len(part["items"])
        columns = [
            rows_all @ part["ease_all"],
            rows_own @ part["ease_own"],
            (rows_all @ part["gfcf"]).toarray(),
            (rows_own @ part["cooc_own"]).toarray(),
            (rows_own @ part["cooc_others"]).toarray(),
            np.broadcast_to(part["log_pop_own"], (n, m)),
            np.broadcast_to(part["log_pop_all"], (n, m)),
            np.broadcast_to(part["markets_selling"], (n, m)),
            np.broadcast_to(np.asarray(rows_own.sum(1)).reshape(-1, 1), (n, m)),
        ]
        return np.stack([np.asarray(c, dtype=np.float32) for c in columns], axis=-1)


class CMRanker(CrossMarketModel, GeneralRecommender):
    input_type = InputType.POINTWISE
    type = ModelType.TRADITIONAL
    train_markets = ("all",)  # every market's rows feed the base scores and the ranker's frame

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        problems = self.check_settings(config.final_config_dict)
        if problems:
            raise CrossMarketError("impossible CMRanker hyper-parameters: " + "; ".join(problems))
        self.fake_loss = torch.nn.Parameter(torch.zeros(1))  # RecBole's trainer needs a parameter
        seed = int(config["seed"])
        X = dataset.history_dataset.inter_matrix(form="csr")
        user_market = np.asarray(dataset.user_market)
        self.target = int(dataset.target_market_id)
        target_items = np.asarray(dataset.target_items)
        self.column_of_item = np.full(self.n_items, -1)
        self.column_of_item[target_items] = np.arange(len(target_items))
        self.kept = [k for k, name in enumerate(FEATURES) if name not in config["ranker_drop_features"]]

        inner_X, held_out = self._inner_split(X, user_market, config["ranker_users_per_market"],
                                              np.random.default_rng(seed))
        inner = BaseScores(inner_X, user_market, config["ease_reg_all"], config["ease_reg_own"])
        self.frame = self._ranking_frame(inner, held_out, target_items, config, np.random.default_rng(seed + 1))
        features, labels, groups = self.frame
        self.ranker = lightgbm.LGBMRanker(
            objective="lambdarank", n_estimators=config["ranker_trees"], learning_rate=config["ranker_learning_rate"],
            num_leaves=config["ranker_leaves"], min_child_samples=config["ranker_min_leaf"], random_state=seed,
            deterministic=True, force_row_wise=True, n_jobs=1, verbose=-1)
        self.ranker.fit(features, labels, group=groups)
        self.scores = BaseScores(X, user_market, config["ease_reg_all"], config["ease_reg_own"])  # all training rows
        self.scores.for_market(self.target, target_items)
        self.other_parameter_name = ["ranker", "scores"]

    @staticmethod
    def check_settings(settings):
        problems = []
        for key in ("ease_reg_all", "ease_reg_own", "ranker_learning_rate"):
            if not isinstance(settings[key], (int, float)) or isinstance(settings[key], bool) or settings[key] <= 0:
                problems.append(f"{key} must be a number > 0, got {settings[key]!r}")
        dropped = settings["ranker_drop_features"]
        if not isinstance(dropped, list) or set(dropped) - set(FEATURES) or len(set(dropped)) == len(FEATURES):
            problems.append(f"ranker_drop_features must list some of {', '.join(FEATURES)} (not all), got {dropped!r}")
        for key, low in (("ranker_trees", 1), ("ranker_leaves", 2), ("ranker_min_leaf", 1), ("ranker_negatives", 1),
                         ("ranker_users_per_market", 1)):
            if not isinstance(settings[key], int) or isinstance(settings[key], bool) or settings[key] < low:
                problems.append(f"{key} must be an integer >= {low}, got {settings[key]!r}")
        return problems

    @staticmethod
    def _inner_split(X, user_market, users_per_market, rng):
        """Training rows without one random item of (at most ``users_per_market``) users of each market with
        two or more training items; returns those rows and ``{user: held-out item}``."""
        X = X.tocsr()
        lengths = np.diff(X.indptr)
        held_out = {}
        keep = np.ones(X.nnz, dtype=bool)
        for market in np.unique(user_market[1:]):
            users = np.flatnonzero((user_market == market) & (lengths >= 2))
            if len(users) > users_per_market:
                users = np.sort(rng.choice(users, size=users_per_market, replace=False))
            for user in users:
                position = X.indptr[user] + int(rng.integers(lengths[user]))
                held_out[int(user)] = int(X.indices[position])
                keep[position] = False
        rows = np.repeat(np.arange(X.shape[0]), lengths)
        inner = sp.csr_matrix((X.data[keep], (rows[keep], X.indices[keep])), shape=X.shape)
        return inner, held_out

    def _ranking_frame(self, scores, held_out, target_items, config, rng):
        """Features, labels and group sizes: per held-out user, the held-out item and random items of the
        user's market that the user's remaining training rows do not hold (as the protocols draw negatives)."""
        X, user_market = scores.X, scores.user_market
        features, labels, groups = [], [], []
        users = np.array(sorted(held_out))
        for market in np.unique(user_market[users]):
            items = target_items if market == self.target else np.unique(X[user_market == market].indices)
            items = np.union1d(items, [held_out[int(u)] for u in users[user_market[users] == market]])
            scores.for_market(market, items)
            column = {int(item): c for c, item in enumerate(items)}
            market_users = users[user_market[users] == market]
            for start in range(0, len(market_users), 256):
                chunk = market_users[start:start + 256]
                block = scores.features(market, chunk)
                for row, user in enumerate(chunk):
                    excluded = np.zeros(len(items), dtype=bool)
                    excluded[[column[int(i)] for i in X[user].indices if int(i) in column]] = True
                    positive = column[held_out[int(user)]]
                    excluded[positive] = True
                    pool = np.flatnonzero(~excluded)
                    drawn = rng.choice(pool, size=min(config["ranker_negatives"], len(pool)), replace=False)
                    features.append(block[row, np.r_[positive, drawn]][:, self.kept])
                    labels.append(np.r_[1, np.zeros(len(drawn), dtype=np.int64)])
                    groups.append(1 + len(drawn))
        return np.concatenate(features), np.concatenate(labels), np.array(groups)

    def write_pictures(self, dataset, folder, title, seed):
        """The ranker's LightGBM gain per feature, as ``feature_gain.csv`` and a bar chart."""
        from recbole_cmr.plots import feature_gain

        names = [FEATURES[k] for k in self.kept]
        gains = self.ranker.booster_.feature_importance("gain")
        write_csv_rows(os.path.join(folder, "feature_gain.csv"),
                       [{"feature": n, "gain": round(float(g), 3)} for n, g in zip(names, gains)])
        feature_gain(names, gains, os.path.join(folder, "feature_gain.png"), f"{title}: what the ranker uses")

    def calculate_loss(self, interaction):
        return torch.nn.Parameter(torch.zeros(1))

    def score_history(self, history, market, candidates):
        """Scores of ``candidates`` for a new user of ``market`` from the ids of their items: the base scores
        read a user only through their items, so a history is all a user needs."""
        market = int(market)
        if market not in self.scores.markets:
            sold = np.unique(self.scores.X[self.scores.user_market == market].indices)
            self.scores.for_market(market, sold)
        items = self.scores.markets[market]["items"]
        row = sp.csr_matrix((np.ones(len(history)), (np.zeros(len(history), dtype=np.int64), history.cpu().numpy())),
                            shape=(1, self.n_items))
        row = _binary(row)
        block = self.scores.features_of_rows(market, row, row[:, items].tocsr())[0][:, self.kept]
        out = np.full(self.n_items, -np.inf, dtype=np.float32)  # items the market never sold
        out[items] = self.ranker.predict(block).astype(np.float32)
        return torch.from_numpy(out[candidates.cpu().numpy()])

    def _rank_scores(self, users):
        """``[len(users), len(target_items)]`` ranker scores of the target market's items."""
        block = self.scores.features(self.target, users)[..., self.kept]
        return self.ranker.predict(block.reshape(-1, len(self.kept))).reshape(len(users), -1).astype(np.float32)

    def predict(self, interaction):
        """Scores of the given (user, item) pairs only: the ranker predicts the candidates, not the catalogue."""
        users = interaction[self.USER_ID].cpu().numpy()
        columns = self.column_of_item[interaction[self.ITEM_ID].cpu().numpy()]
        out = np.full(len(users), -np.inf, dtype=np.float32)  # items the target market never sold
        known = np.flatnonzero(columns >= 0)
        if len(known):
            unique, inverse = np.unique(users[known], return_inverse=True)
            block = self.scores.features(self.target, unique)[inverse, columns[known]][:, self.kept]
            out[known] = self.ranker.predict(block).astype(np.float32)
        return torch.from_numpy(out)

    def full_sort_predict(self, interaction):
        users = interaction[self.USER_ID].cpu().numpy()
        scores = np.full((len(users), self.n_items), -np.inf, dtype=np.float32)
        scores[:, self.scores.markets[self.target]["items"]] = self._rank_scores(users)
        return torch.from_numpy(scores).view(-1)
