"""M3Rec, our reconstruction (Cao et al., SIGIR 2022 publish no code): closed-form item-item
scoring for a target market, with priors learned from all markets.

1. Intra-market prior: EASE (Steck 2019) over the training data of all markets.
2. Inter-market prior: random walks on the item co-occurrence graph. Each market's
   co-occurrence counts are row-normalised and summed (every market weighs the
   same), the sum is row-normalised into a transition matrix ``T``, and the prior
   is ``(1 - a) * sum_k a**(k-1) T**k`` over ``walk_steps`` steps: items bought
   together in one market become similar in every market, also through chains.
3. Target adaptation: EASE on the target market's training rows, shrunk toward
   the mixed prior ``B0 = (1 - w) intra + w inter`` instead of toward zero:
   ``min ||X - X B||^2 + l ||B - B0||^2, diag(B) = 0``, which has the closed form
   ``B = I + l P (B0 - I) - P diag(g)`` with ``P = (X'X + l I)^-1`` and ``g`` making
   the diagonal zero. Only the rows of target-market items are needed to score
   target users (their histories hold only those items), so only they are kept.
"""

import numpy as np
import scipy.sparse as sp
import torch
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType, ModelType

from recbole_cmr.model.abstract_recommender import CrossMarketModel
from recbole_cmr.utils import CrossMarketError


def _row_normalise(matrix):
    sums = np.asarray(matrix.sum(axis=1)).ravel()
    sums[sums == 0] = 1.0
    return sp.diags(1.0 / sums) @ matrix


def _scale(matrix):
    """Divide by the mean absolute row sum, so priors of different origin mix on one scale."""
    mean = np.abs(matrix).sum(axis=1).mean()
    return matrix / mean if mean > 0 else matrix


class M3Rec(CrossMarketModel, GeneralRecommender):
    input_type = InputType.POINTWISE
    type = ModelType.TRADITIONAL
    label = "M3Rec (our reconstruction)"
    train_markets = ("all",)  # the priors read all markets' training data

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        reg_weight, target_reg_weight = config["reg_weight"], config["target_reg_weight"]
        inter_weight, steps, restart = config["inter_weight"], config["walk_steps"], config["walk_restart"]
        problems = []
        if not reg_weight > 0 or not target_reg_weight > 0:
            problems.append("reg_weight and target_reg_weight must be > 0")
        if not 0 <= inter_weight <= 1:
            problems.append(f"inter_weight must be in [0, 1], got {inter_weight!r}")
        if not isinstance(steps, int) or steps < 1:
            problems.append(f"walk_steps must be an integer >= 1, got {steps!r}")
        if not 0 <= restart < 1:
            problems.append(f"walk_restart must be in [0, 1), got {restart!r}")
        if problems:
            raise CrossMarketError("impossible M3Rec hyper-parameters: " + "; ".join(problems))
        self.dummy_param = torch.nn.Parameter(torch.zeros(1))  # RecBole's trainer needs a parameter

        history = dataset.history_dataset
        X = history.inter_matrix(form="csr").astype(np.float64)
        X.data[:] = 1.0
        users_market = np.asarray(dataset.user_market)
        target = np.asarray(dataset.target_items)
        target_users = users_market == dataset.target_market_id
        target_users[0] = False

        intra = self._ease_rows(X, reg_weight, target)
        inter = self._walk_rows(X, users_market, target, steps, restart)
        prior = (1 - inter_weight) * _scale(intra) + inter_weight * _scale(inter)
        rows = self._adapt_rows(X[target_users][:, target], prior, target, target_reg_weight)

        self.target_items = target
        self.target_market_id = dataset.target_market_id
        self.history_matrix = X[:, target].tocsr()  # users x target items
        self.item_weights = rows.astype(np.float32)  # target items x all items
        self.other_parameter_name = ["history_matrix", "item_weights"]

    @staticmethod
    def _ease_rows(X, reg_weight, rows):
        """Rows ``rows`` of the EASE item-item matrix over all markets' training data."""
        gram = (X.T @ X).toarray()
        gram[np.diag_indices_from(gram)] += reg_weight
        inverse = np.linalg.inv(gram)
        weights = -inverse[rows] / np.diag(inverse)
        weights[np.arange(len(rows)), rows] = 0.0
        return weights

    @staticmethod
    def _walk_rows(X, users_market, rows, steps, restart):
        """Rows ``rows`` of the random-walk similarity over per-market co-occurrence graphs."""
        graph = sp.csr_matrix((X.shape[1], X.shape[1]))
        for market in np.unique(users_market[1:]):
            X_market = X[users_market == market]
            co = (X_market.T @ X_market).tolil()
            co.setdiag(0)
            graph = graph + _row_normalise(co.tocsr())
        transition = _row_normalise(graph).tocsr()
        walk = transition[rows].toarray()
        similarity = (1 - restart) * walk
        for k in range(2, steps + 1):
            walk = np.asarray((transition.T @ walk.T).T)
            similarity += (1 - restart) * restart ** (k - 1) * walk
        similarity[np.arange(len(rows)), rows] = 0.0
        return similarity

    @staticmethod
    def _adapt_rows(X_target, prior, target, reg_weight):
        """Rows of ``B`` minimising ``||X - XB||^2 + l ||B - B0||^2`` with a zero diagonal (module docstring)."""
        gram = (X_target.T @ X_target).toarray()
        gram[np.diag_indices_from(gram)] += reg_weight
        P = np.linalg.inv(gram)  # the target block of (X'X + l I)^-1; outside it, P is I / l
        identity_rows = np.zeros_like(prior)
        identity_rows[np.arange(len(target)), target] = 1.0
        weights = identity_rows + reg_weight * P @ (prior - identity_rows)
        gamma = weights[np.arange(len(target)), target] / np.diag(P)
        weights[:, target] -= P * gamma
        return weights

    def forward(self):
        pass

    def calculate_loss(self, interaction):
        return torch.nn.Parameter(torch.zeros(1))

    def predict(self, interaction):
        users = interaction[self.USER_ID].cpu().numpy()
        items = interaction[self.ITEM_ID].cpu().numpy()
        history = self.history_matrix[users]
        scores = np.asarray(history.multiply(self.item_weights[:, items].T).sum(axis=1)).ravel()
        return torch.from_numpy(scores.astype(np.float32)).to(self.device)

    def score_history(self, history, market, candidates):
        """Scores of ``candidates`` for a new user of the target market from the ids of their items."""
        if market != self.target_market_id:
            raise CrossMarketError("M3Rec's item weights are fitted for its target market only; recommend for "
                                   "that market, or train M3Rec with the other market as target")
        row = np.isin(self.target_items, history.cpu().numpy()).astype(np.float32)
        return torch.from_numpy(np.asarray(row @ self.item_weights, dtype=np.float32)[candidates.cpu().numpy()])

    def full_sort_predict(self, interaction):
        users = interaction[self.USER_ID].cpu().numpy()
        scores = self.history_matrix[users] @ self.item_weights
        return torch.from_numpy(np.asarray(scores, dtype=np.float32)).view(-1).to(self.device)
