"""Cross-market NeuMF baselines, built on RecBole's NeuMF.

- :class:`MANeuMF`: market-aware NeuMF (Bhargav et al., ECIR 2023). A learned
  embedding per market multiplies the item embedding element-wise in the GMF
  and the MLP path; trained on all markets at once.
- :class:`FOREC`: forked recommender (Bonab et al., CIKM 2021), in the variant
  the ACMR paper compares with: a NeuMF is pre-trained on every market except
  the target (``train_markets: source``); at fine-tuning a market-specific head
  is forked on top of the frozen shared MLP tower and trained on the target
  market with the embeddings. MAML is not used.
"""

import torch
from recbole.model.general_recommender import NeuMF
from torch import nn

from recbole_cmr.model.abstract_recommender import CrossMarketModel


class MANeuMF(CrossMarketModel, NeuMF):
    """NeuMF whose item embeddings are modulated by the user's market (users belong to one market)."""

    train_markets = ("all",)  # trained on all markets at once (the model's point)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.register_buffer("user_market", torch.as_tensor(dataset.user_market), persistent=False)
        n_markets = len(dataset.field2id_token[dataset.market_field])
        self.market_mf_embedding = nn.Embedding(n_markets, self.mf_embedding_size)
        self.market_mlp_embedding = nn.Embedding(n_markets, self.mlp_embedding_size)
        # start as plain NeuMF (multiplier 1) so the market signal is learned, not imposed
        nn.init.ones_(self.market_mf_embedding.weight)
        nn.init.ones_(self.market_mlp_embedding.weight)

    def forward(self, user, item):
        market = self.user_market[user]
        mf = self.user_mf_embedding(user) * self.item_mf_embedding(item) * self.market_mf_embedding(market)
        mlp_input = torch.cat((self.user_mlp_embedding(user),
                               self.item_mlp_embedding(item) * self.market_mlp_embedding(market)), -1)
        return self.predict_layer(torch.cat((mf, self.mlp_layers(mlp_input)), -1)).squeeze(-1)


class FOREC(CrossMarketModel, NeuMF):
    """NeuMF pre-trained on the source markets, then forked: a target-market head over the frozen shared tower.

    The two-phase runner calls :meth:`start_finetune` after loading the pre-trained
    weights. The forked head is one ReLU layer initialised to the identity plus a
    copy of the prediction layer, so fine-tuning starts from the shared model's scores.
    """

    train_markets = ("source",)  # the shared model never sees target-market data

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        width = self.mlp_hidden_size[-1]
        self.target_head = nn.Sequential(nn.Linear(width, width), nn.ReLU())
        self.target_predict_layer = nn.Linear(self.predict_layer.in_features, 1)
        self.register_buffer("forked", torch.tensor(False))

    def start_finetune(self):
        """Fork the target-market head and freeze the shared MLP tower."""
        with torch.no_grad():
            self.target_head[0].weight.copy_(torch.eye(self.target_head[0].in_features))
            self.target_head[0].bias.zero_()
            self.target_predict_layer.load_state_dict(self.predict_layer.state_dict())
        self.mlp_layers.requires_grad_(False)
        self.predict_layer.requires_grad_(False)
        self.forked.fill_(True)

    def forward(self, user, item):
        if not bool(self.forked):
            return super().forward(user, item)
        mf = self.user_mf_embedding(user) * self.item_mf_embedding(item)
        tower = self.mlp_layers(torch.cat((self.user_mlp_embedding(user), self.item_mlp_embedding(item)), -1))
        return self.target_predict_layer(torch.cat((mf, self.target_head(tower)), -1)).squeeze(-1)
