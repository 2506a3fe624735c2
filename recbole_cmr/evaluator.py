"""RecBole's Evaluator, keeping the per-user values behind each mean (for paired significance tests)."""

import numpy as np
from recbole.evaluator import Evaluator


class PerUserEvaluator(Evaluator):
    """After each ``evaluate``, ``last_per_user`` maps e.g. ``ndcg@10`` to one value per evaluated user.

    Users come in the order RecBole's evaluation dataloaders visit them (ascending user id),
    so two models evaluated on the same split are aligned user by user.
    """

    last_per_user = None

    def evaluate(self, dataobject):
        result = super().evaluate(dataobject)
        per_user = {}
        for name, metric in self.metric_class.items():
            if hasattr(metric, "metric_info") and hasattr(metric, "topk"):
                pos_index, pos_len = metric.used_info(dataobject)
                n_args = metric.metric_info.__code__.co_argcount - 1  # MRR takes pos_index only
                values = metric.metric_info(*(pos_index, pos_len)[:n_args])
                for k in metric.topk:
                    per_user[f"{name}@{k}"] = np.asarray(values[:, k - 1], dtype=np.float64)
        self.last_per_user = per_user
        return result
