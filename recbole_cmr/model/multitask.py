"""Multi-domain baselines of the ACMR paper, adapted to markets as the paper describes: shared user and item
embeddings, one task per market trained on all markets at once, and the target market's task scoring.

A row is (user, item); users belong to one market, so each row trains its user's market's task, with BCE
on RecBole's sampled negatives as NeuMF does. The input of every task is concat(user, item embedding).
The paper says "the target market and other markets are treated as different tasks"; MMoE and
Cross-Stitch here give every market its own task (CoNet and DDTCDR, two domains, pool the others).

- :class:`MMoE` (Ma et al., KDD 2018): shared expert MLPs, one softmax gate per market mixing them, one
  tower per market.
- :class:`CrossStitch` (Misra et al., CVPR 2016): one MLP per market; after each layer a learned
  cross-stitch matrix mixes every market's hidden units into every other's (initialised near the
  identity, so a market first listens mostly to itself).

Cross-domain baselines, with two domains: the target market and the other markets together.

- :class:`CoNet` (Hu et al., CIKM 2018): a network per domain over the same (user, item) input, with
  cross connections: each layer adds a shared transfer matrix times the other domain's hidden units.
  CoNet pairs the two domains through shared users; here users are per market, so the link is on the
  item side as the ACMR paper describes: both networks read the row's shared item embedding, and the
  row's own domain's output scores it.
- :class:`DDTCDR` (Li & Tuzhilin, WSDM 2020): an item embedding per domain and a latent orthogonal
  mapping between the domains (regularised towards ``X^T X = I``); a row's item representation mixes its
  own domain's embedding with the mapped embedding of the other domain (``transfer_weight``). The
  original maps user embeddings through shared users; here, as above, the dual transfer is on items.
"""

import torch
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.model.init import xavier_normal_initialization
from recbole.model.layers import MLPLayers
from recbole.utils import InputType
from torch import nn

from recbole_cmr.model.abstract_recommender import CrossMarketModel


class _MarketTaskModel(CrossMarketModel, GeneralRecommender):
    """Shared embeddings, BCE per row, the row's market chosen by its user; subclasses give the tasks."""

    input_type = InputType.POINTWISE
    train_markets = ("all",)  # every market is a task

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.LABEL = config["LABEL_FIELD"]
        d = config["embedding_size"]
        self.user_embedding = nn.Embedding(self.n_users, d)
        self.item_embedding = nn.Embedding(self.n_items, d)
        self.register_buffer("user_market", torch.as_tensor(dataset.user_market), persistent=False)
        self.n_markets = len(dataset.field2id_token[dataset.market_field])
        self.loss_fct = nn.BCEWithLogitsLoss()

    @staticmethod
    def check_settings(settings):
        problems = []
        hidden = settings["task_hidden_size"]
        if not isinstance(hidden, list) or not hidden or not all(isinstance(h, int) and h >= 1 for h in hidden):
            problems.append(f"task_hidden_size must be a non-empty list of integers >= 1, got {hidden!r}")
        return problems

    def logits(self, inputs, markets):
        """``[B]`` logits of each row's market task from ``[B, 2d]`` inputs."""
        raise NotImplementedError

    def forward(self, user, item):
        inputs = torch.cat([self.user_embedding(user), self.item_embedding(item)], dim=-1)
        return self.logits(inputs, self.user_market[user])

    def calculate_loss(self, interaction):
        output = self.forward(interaction[self.USER_ID], interaction[self.ITEM_ID])
        return self.loss_fct(output, interaction[self.LABEL])

    def predict(self, interaction):
        return torch.sigmoid(self.forward(interaction[self.USER_ID], interaction[self.ITEM_ID]))


class MMoE(_MarketTaskModel):
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        d, hidden = config["embedding_size"], config["task_hidden_size"]
        self.experts = nn.ModuleList(MLPLayers([2 * d] + hidden, config["dropout_prob"])
                                     for _ in range(config["n_experts"]))
        self.gates = nn.Parameter(torch.zeros(self.n_markets, 2 * d, config["n_experts"]))
        self.towers = nn.ModuleList(nn.Linear(hidden[-1], 1) for _ in range(self.n_markets))
        self.apply(xavier_normal_initialization)
        nn.init.normal_(self.gates, std=0.01)

    @staticmethod
    def check_settings(settings):
        problems = _MarketTaskModel.check_settings(settings)
        if not isinstance(settings["n_experts"], int) or settings["n_experts"] < 1:
            problems.append(f"n_experts must be an integer >= 1, got {settings['n_experts']!r}")
        return problems

    def logits(self, inputs, markets):
        experts = torch.stack([expert(inputs) for expert in self.experts], dim=1)  # [B, K, h]
        gate = torch.softmax(torch.einsum("bi,bik->bk", inputs, self.gates[markets]), dim=-1)
        mixed = (gate.unsqueeze(-1) * experts).sum(1)
        out = torch.empty(len(inputs), device=inputs.device)
        for market in markets.unique().tolist():
            rows = markets == market
            out[rows] = self.towers[market](mixed[rows]).squeeze(-1)
        return out


class CrossStitch(_MarketTaskModel):
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        d, hidden = config["embedding_size"], config["task_hidden_size"]
        widths = [2 * d] + hidden
        m = self.n_markets
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(m, a, b)) for a, b in zip(widths, widths[1:]))
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(m, 1, b)) for b in widths[1:])
        own = config["stitch_self_weight"]
        stitch = torch.full((m, m), (1 - own) / max(m - 1, 1)).fill_diagonal_(own)
        self.stitches = nn.ParameterList(nn.Parameter(stitch.clone()) for _ in hidden)
        self.out = nn.Parameter(torch.empty(m, hidden[-1]))
        self.out_bias = nn.Parameter(torch.zeros(m))
        self.dropout = nn.Dropout(config["dropout_prob"])
        self.apply(xavier_normal_initialization)
        for weight in list(self.weights) + [self.out]:
            nn.init.xavier_normal_(weight)

    @staticmethod
    def check_settings(settings):
        problems = _MarketTaskModel.check_settings(settings)
        own = settings["stitch_self_weight"]
        if not isinstance(own, (int, float)) or not 0 < own <= 1:
            problems.append(f"stitch_self_weight must be in (0, 1], got {own!r}")
        return problems

    def logits(self, inputs, markets):
        hidden = inputs.unsqueeze(0).expand(self.n_markets, -1, -1)  # every market's network sees the row
        for weight, bias, stitch in zip(self.weights, self.biases, self.stitches):
            hidden = self.dropout(torch.relu(torch.bmm(hidden, weight) + bias))
            hidden = torch.einsum("ts,sbh->tbh", stitch, hidden)
        logits = torch.einsum("mbh,mh->mb", hidden, self.out) + self.out_bias.unsqueeze(1)
        return logits.gather(0, markets.unsqueeze(0)).squeeze(0)


class CoNet(_MarketTaskModel):
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        d, hidden = config["embedding_size"], config["task_hidden_size"]
        self.target = int(dataset.target_market_id)
        widths = [2 * d] + hidden
        self.layers = nn.ModuleList(nn.ModuleList(nn.Linear(a, b) for _ in range(2))  # target, other markets
                                    for a, b in zip(widths, widths[1:]))
        self.transfers = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(widths, widths[1:]))
        self.heads = nn.ModuleList(nn.Linear(hidden[-1], 1) for _ in range(2))
        self.dropout = nn.Dropout(config["dropout_prob"])
        self.apply(xavier_normal_initialization)

    def logits(self, inputs, markets):
        target, sources = inputs, inputs
        for (target_layer, source_layer), transfer in zip(self.layers, self.transfers):
            target, sources = (self.dropout(torch.relu(target_layer(target) + transfer(sources))),
                               self.dropout(torch.relu(source_layer(sources) + transfer(target))))
        own = markets == self.target
        return torch.where(own, self.heads[0](target).squeeze(-1), self.heads[1](sources).squeeze(-1))


class DDTCDR(_MarketTaskModel):
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        d, hidden = config["embedding_size"], config["task_hidden_size"]
        self.target = int(dataset.target_market_id)
        self.transfer_weight = config["transfer_weight"]
        self.orthogonality_weight = config["orthogonality_weight"]
        self.source_item_embedding = nn.Embedding(self.n_items, d)  # item_embedding is the target domain's
        self.mapping = nn.Parameter(torch.empty(d, d))
        self.networks = nn.ModuleList(MLPLayers([2 * d] + hidden, config["dropout_prob"]) for _ in range(2))
        self.heads = nn.ModuleList(nn.Linear(hidden[-1], 1) for _ in range(2))
        self.apply(xavier_normal_initialization)
        nn.init.orthogonal_(self.mapping)

    @staticmethod
    def check_settings(settings):
        problems = _MarketTaskModel.check_settings(settings)
        if not isinstance(settings["transfer_weight"], (int, float)) or not 0 <= settings["transfer_weight"] <= 1:
            problems.append(f"transfer_weight must be in [0, 1], got {settings['transfer_weight']!r}")
        if not isinstance(settings["orthogonality_weight"], (int, float)) or settings["orthogonality_weight"] < 0:
            problems.append(f"orthogonality_weight must be >= 0, got {settings['orthogonality_weight']!r}")
        return problems

    def forward(self, user, item):
        own = self.user_market[user] == self.target
        target_item, source_item = self.item_embedding(item), self.source_item_embedding(item)
        keep = 1 - self.transfer_weight
        as_target = keep * target_item + self.transfer_weight * source_item @ self.mapping.T
        as_source = keep * source_item + self.transfer_weight * target_item @ self.mapping
        users = self.user_embedding(user)
        target = self.heads[0](self.networks[0](torch.cat([users, as_target], -1))).squeeze(-1)
        sources = self.heads[1](self.networks[1](torch.cat([users, as_source], -1))).squeeze(-1)
        return torch.where(own, target, sources)

    def calculate_loss(self, interaction):
        identity = torch.eye(len(self.mapping), device=self.mapping.device)
        orthogonality = ((self.mapping.T @ self.mapping - identity) ** 2).sum()
        return super().calculate_loss(interaction) + self.orthogonality_weight * orthogonality
