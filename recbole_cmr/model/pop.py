"""Pop that counts interactions.

RecBole 1.2.1's ``Pop.calculate_loss`` adds one per distinct item per batch
(``item_cnt[item] += 1`` with repeated indices writes each index once) and, being
point-wise, also counts its sampled negatives: on the shipped IN market its
counts top out at 2 while the most popular item has 83 training interactions
(RecBole issues #1844 and #2198). Popularity is the baseline every CMR model
must beat, so this one counts each training interaction once.
"""

import torch
from recbole.model.general_recommender import Pop as RecBolePop


class Pop(RecBolePop):
    """RecBole's Pop with ``item_cnt`` equal to the number of training interactions per item."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.LABEL = config["LABEL_FIELD"]

    def calculate_loss(self, interaction):
        item = interaction[self.ITEM_ID]
        if self.LABEL in interaction:  # only if negatives are sampled; Pop.yaml turns that off
            item = item[interaction[self.LABEL] > 0]
        self.item_cnt.index_add_(0, item, torch.ones_like(item).unsqueeze(-1))
        self.max_cnt = torch.max(self.item_cnt, dim=0)[0]
        return torch.nn.Parameter(torch.zeros(1, device=self.device))

    def score_history(self, history, market, candidates):
        """Popularity does not depend on the user: a new user gets the scores every user gets."""
        return (self.item_cnt.to(torch.float64) / self.max_cnt.to(torch.float64)).view(-1)[candidates]
