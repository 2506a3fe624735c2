"""RecBole's collector and ranking metrics, made fair to ties and to items a model never trained on.

RecBole ranks candidates with ``torch.topk``: among equal scores the lowest item ids win, so a model
that ties often (Pop, ItemKNN, EASE's zero rows) is credited with whatever order the item ids have.
Here every metric is its **expected value when tied candidates are put in uniformly random order**,
computed exactly (no sampling): a positive tied with ``t`` other candidates behind ``g`` better ones
sits at each rank ``g+1 .. g+t+1`` with probability ``1/(t+1)``. A model scoring every candidate
equally gets Recall@K = K / (number of candidates).

``untrained_items: last`` (the default) ranks candidates that never occurred in the model's training
rows below every trained candidate, all tied with each other: their scores (0 for EASE, an
initial embedding for a neural model) carry no evidence. ``untrained_items: score`` keeps the
model's own scores for them.
"""

import numpy as np
import torch
from recbole.evaluator import Collector, Evaluator
from recbole.evaluator.metrics import MRR, NDCG, Hit, Precision, Recall

from recbole_cmr.utils import CrossMarketError

UNTRAINED_ITEM_RULES = ("last", "score")
#: Recorded with every comparison grid, so cells evaluated under other rules never share a table.
EVALUATION = "expected value over random order among ties"


def expected_positions(scores, positive_u, positive_i, trained_items, k):
    """``[rows, k + 1]``: P(a positive at rank j) for j = 1..k (summed over the row's positives), then
    the row's number of positives (RecBole's ``rec.topk`` layout, with probabilities for 0/1 flags).

    ``scores`` is ``-inf`` where an item is not a candidate (RecBole's convention); ``trained_items``
    (bool per item, or None) marks items that rank above every untrained candidate.
    """
    if torch.isnan(scores).any():
        raise CrossMarketError("the model gave a NaN score to a candidate; check its training (loss, learning rate)")
    candidate = scores > float("-inf")
    level = candidate.to(torch.int8)  # 0: not a candidate, 1: untrained candidate, 2: trained candidate
    value = torch.zeros_like(scores)
    if trained_items is None:
        level = level * 2
        value = torch.where(candidate, scores, value)
    else:
        trained = candidate & trained_items.to(scores.device)[None, :]
        level = level + trained.to(torch.int8)
        value = torch.where(trained, scores, value)  # untrained candidates: all tied
    rows_level, rows_value = level[positive_u], value[positive_u]
    own_level = rows_level[torch.arange(len(positive_i)), positive_i].unsqueeze(1)
    own_value = rows_value[torch.arange(len(positive_i)), positive_i].unsqueeze(1)
    same_level = rows_level == own_level
    better = ((rows_level > own_level) | (same_level & (rows_value > own_value))).sum(1)
    tied = (same_level & (rows_value == own_value)).sum(1)  # the positive itself included
    rank = torch.arange(k, device=scores.device).unsqueeze(0)  # 0-based
    in_block = (rank >= better.unsqueeze(1)) & (rank < (better + tied).unsqueeze(1))
    probability = in_block.to(torch.float64) / tied.clamp(min=1).unsqueeze(1)
    probability[own_level.squeeze(1) == 0] = 0.0  # a masked positive is never retrieved
    out = torch.zeros(scores.shape[0], k, dtype=torch.float64, device=scores.device)
    out.index_add_(0, positive_u, probability)
    count = torch.bincount(positive_u, minlength=scores.shape[0]).to(torch.float64).unsqueeze(1)
    return torch.cat([out, count], dim=1).cpu()


class FairRankingCollector(Collector):
    """RecBole's Collector whose ``rec.topk`` holds expected positions (see the module docstring).

    ``trained_items`` (bool per item) is set by the runner once it knows the model's training rows;
    it stays None for ``untrained_items: score``.
    """

    trained_items = None

    def eval_batch_collect(self, scores_tensor, interaction, positive_u, positive_i):
        # Every metric FairEvaluator admits reads rec.topk only.
        self.data_struct.update_tensor(
            "rec.topk", expected_positions(scores_tensor, positive_u, positive_i, self.trained_items, max(self.topk)))


class ExpectedPositionsMixin:
    """RecBole's top-k metric reading ``rec.topk`` as probabilities instead of casting it to booleans."""

    def used_info(self, dataobject):
        rec_mat = dataobject.get("rec.topk")
        probability, pos_len = torch.split(rec_mat, [max(self.topk), 1], dim=1)
        return probability.numpy().astype(np.float64), pos_len.squeeze(-1).numpy().astype(np.int64)


class OnePositiveMixin:
    """Metrics of the first hit are linear in the position probabilities only with one positive per user,
    as in every protocol of this plugin (leave-one-out)."""

    def used_info(self, dataobject):
        probability, pos_len = super().used_info(dataobject)
        if (pos_len > 1).any():
            raise CrossMarketError(f"{type(self).__name__} with fair ties needs one positive per evaluated user")
        return probability, pos_len


class ExpectedRecall(ExpectedPositionsMixin, Recall):
    pass  # RecBole's formula is linear in the positions


class ExpectedPrecision(ExpectedPositionsMixin, Precision):
    pass  # linear too


class ExpectedNDCG(ExpectedPositionsMixin, NDCG):
    def metric_info(self, pos_index, pos_len):
        ranks = np.arange(1, pos_index.shape[1] + 1)
        dcg = np.cumsum(pos_index / np.log2(ranks + 1), axis=1)
        ideal = np.cumsum(1.0 / np.log2(ranks + 1))[np.clip(np.minimum(pos_len, pos_index.shape[1]), 1, None) - 1]
        return dcg / ideal.reshape(-1, 1)


class ExpectedMRR(OnePositiveMixin, ExpectedPositionsMixin, MRR):
    def metric_info(self, pos_index):
        return np.cumsum(pos_index / np.arange(1, pos_index.shape[1] + 1), axis=1)


class ExpectedHit(OnePositiveMixin, ExpectedPositionsMixin, Hit):
    def metric_info(self, pos_index):
        return np.cumsum(pos_index, axis=1)


#: RecBole metric name -> its fair-tie version; other metrics are refused by the config check.
FAIR_METRICS = {"recall": ExpectedRecall, "precision": ExpectedPrecision, "ndcg": ExpectedNDCG,
                "mrr": ExpectedMRR, "hit": ExpectedHit}


class FairEvaluator(Evaluator):
    """RecBole's Evaluator with the fair-tie metrics; keeps the per-user values behind each mean.

    After each ``evaluate``, ``last_per_user`` maps e.g. ``ndcg@10`` to one value per evaluated
    user, in the order RecBole's evaluation dataloaders visit them (ascending user id), so two
    models evaluated on the same split are aligned user by user (paired significance tests).
    """

    last_per_user = None

    def __init__(self, config):
        super().__init__(config)
        self.metric_class = {name: FAIR_METRICS[name](config) for name in self.metrics}

    def evaluate(self, dataobject):
        result = super().evaluate(dataobject)
        per_user = {}
        for name, metric in self.metric_class.items():
            pos_index, pos_len = metric.used_info(dataobject)
            n_args = metric.metric_info.__code__.co_argcount - 1  # MRR, Hit, Precision take pos_index only
            values = metric.metric_info(*(pos_index, pos_len)[:n_args])
            for k in metric.topk:
                per_user[f"{name}@{k}"] = np.asarray(values[:, k - 1], dtype=np.float64)
        self.last_per_user = per_user
        return result
