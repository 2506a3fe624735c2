"""ACMR: attentive cross-market recommendation (Hu et al.), as a RecBole general model.

A row is (user, candidate item). Its sequence is the candidate followed by up
to ``max_history_len`` of the user's training items; every position embeds as
shared item embedding + the user's market embedding, then LayerNorm and
dropout. ``n_layers`` bidirectional post-LN transformer layers encode it; the
user vector is the mean of the history outputs, and one linear layer over
concat(user, candidate output) gives the logit, trained with BCE against the
negatives RecBole's TrainDataLoader samples.

Rows are encoded in buckets of similar history length, each padded only to
its own longest history, so a batch costs about its true token count.
"""

import os

import numpy as np
import torch
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType
from torch import nn
from torch.utils.checkpoint import checkpoint

from recbole_cmr.model.abstract_recommender import CrossMarketModel
from recbole_cmr.model.acmr_kernels import KERNEL_MODES, fused_layer_forward, load_kernels
from recbole_cmr.utils import CrossMarketError

#: Training buckets whose attention maps exceed this many floats per layer are recomputed in backward.
RECOMPUTE_ATTENTION_FLOATS = 2**23


class Dropout(nn.Dropout):
    """nn.Dropout with a cheaper mask: four 16-bit uniform draws per 64-bit random word.

    On CPU the mask draw of ``nn.Dropout`` (``bernoulli_``) is the largest cost of a
    training step; this keeps the distribution (drop probability within 2**-16 of p)
    at a third of the cost.
    """

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        bits = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device)
        bits = bits.random_(-2**63, 2**63 - 1).view(torch.int16)[: x.numel()].view(x.shape)
        threshold = round(self.p * 2**16) - 2**15  # P(bits < threshold) = p, up to 2**-16
        return x * (bits >= threshold) * (1.0 / (1.0 - self.p))


class TransformerLayer(nn.Module):
    """Bidirectional post-LN transformer layer (paper eq. 6), as torch's TransformerEncoderLayer
    with ReLU and norm_first=False, written out so that its dropouts use :class:`Dropout`."""

    def __init__(self, d, n_heads, dropout_prob):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d // n_heads
        self.qkv = nn.Linear(d, 3 * d)
        self.attention_out = nn.Linear(d, d)
        self.ffn_in = nn.Linear(d, 4 * d)
        self.ffn_out = nn.Linear(4 * d, d)
        self.attention_norm = nn.LayerNorm(d)
        self.ffn_norm = nn.LayerNorm(d)
        self.attention_dropout = Dropout(dropout_prob)
        self.ffn_dropout = Dropout(dropout_prob)
        self.residual_dropout = Dropout(dropout_prob)

    def forward(self, x, attention_bias, return_attention=False):
        """``x``: [b, n, d]; ``attention_bias``: [b, 1, 1, n], 0 for real positions and -inf for padding.
        ``return_attention`` also returns the attention weights, [b, heads, n, n]."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        bias = attention_bias.expand(b, self.n_heads, 1, n).reshape(b * self.n_heads, 1, n)
        scores = torch.baddbmm(bias, q.reshape(-1, n, self.head_dim), k.reshape(-1, n, self.head_dim).transpose(1, 2),
                               alpha=self.head_dim ** -0.5)
        weights = self.attention_dropout(torch.softmax(scores, dim=-1))
        attended = (weights @ v.reshape(-1, n, self.head_dim)).view(b, self.n_heads, n, self.head_dim)
        attended = attended.transpose(1, 2).reshape(b, n, d)
        x = self.attention_norm(x + self.residual_dropout(self.attention_out(attended)))
        ffn = self.ffn_out(self.ffn_dropout(torch.relu(self.ffn_in(x))))
        out = self.ffn_norm(x + self.residual_dropout(ffn))
        return (out, weights.view(b, self.n_heads, n, n)) if return_attention else out


class ACMR(CrossMarketModel, GeneralRecommender):
    input_type = InputType.POINTWISE
    train_markets = ("all", "target", "source")  # target and source: the paper's ablation and cold start

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.embedding_size = config["embedding_size"]
        self.n_heads = config["n_heads"]
        self.n_layers = config["n_layers"]
        self.dropout_prob = config["dropout_prob"]
        self.max_history_len = config["max_history_len"]
        self.bucket_rows = config["bucket_rows"]
        self.use_market_embedding = config["use_market_embedding"]
        self.history_keeps_positive = config["history_keeps_positive"]
        self.LABEL = config["LABEL_FIELD"]
        self.fused = config["fused_kernels"] != "eager" and load_kernels() is not None
        if config["fused_kernels"] == "fused" and not self.fused:
            raise CrossMarketError("fused_kernels: fused, but ACMR's CPU kernels could not be built here (see the "
                                   "warning above: a C++ compiler and ninja are needed); use fused_kernels: auto")
        problems = self.check_settings(config.final_config_dict)
        if problems:
            raise CrossMarketError("impossible ACMR hyper-parameters: " + "; ".join(problems))

        history, _ = dataset.train_history()
        self.register_buffer("history_items", history, persistent=False)
        # Fixed ranking keys make evaluation pick the same history subset every time.
        generator = torch.Generator().manual_seed(int(config["seed"]))
        self.register_buffer("history_keys", torch.rand(history.shape, generator=generator), persistent=False)
        self.register_buffer("user_market", torch.as_tensor(dataset.user_market), persistent=False)
        self.register_buffer("target_items", torch.as_tensor(dataset.target_items), persistent=False)

        d = self.embedding_size
        self.item_embedding = nn.Embedding(self.n_items, d, padding_idx=0)
        n_markets = len(dataset.field2id_token[dataset.market_field])
        self.market_embedding = nn.Embedding(n_markets, d) if self.use_market_embedding else None
        self.embedding_norm = nn.LayerNorm(d)
        self.embedding_dropout = Dropout(self.dropout_prob)
        self.layers = nn.ModuleList(TransformerLayer(d, self.n_heads, self.dropout_prob) for _ in range(self.n_layers))
        self.prediction = nn.Linear(2 * d, 1)
        self.loss_fct = nn.BCEWithLogitsLoss()
        self.apply(self._init_weights)

    @staticmethod
    def check_settings(settings):
        """Problems with ACMR's hyper-parameters in a final config dict (checked before any data is read)."""
        problems = []
        d, heads = settings["embedding_size"], settings["n_heads"]
        if not isinstance(d, int) or d < 1:
            problems.append(f"embedding_size must be a positive integer, got {d!r}")
        elif not isinstance(heads, int) or heads < 1 or d % heads:
            problems.append(f"n_heads ({heads!r}) must be a positive divisor of embedding_size ({d})")
        for key, what in (("n_layers", "n_layers"), ("max_history_len", "max_history_len (SL)"),
                          ("bucket_rows", "bucket_rows")):
            if not isinstance(settings[key], int) or isinstance(settings[key], bool) or settings[key] < 1:
                problems.append(f"{what} must be an integer >= 1, got {settings[key]!r}")
        if settings["fused_kernels"] not in KERNEL_MODES:
            problems.append(f"fused_kernels must be one of {', '.join(KERNEL_MODES)}, "
                            f"got {settings['fused_kernels']!r}")
        if not isinstance(settings["dropout_prob"], (int, float)) or not 0 <= settings["dropout_prob"] < 1:
            problems.append(f"dropout_prob must be in [0, 1), got {settings['dropout_prob']!r}")
        neg = settings["train_neg_sample_args"]
        if not neg or neg.get("distribution") == "none" or not neg.get("sample_num"):
            problems.append("ACMR trains with BCE on sampled negatives: set train_neg_sample_args.sample_num >= 1")
        return problems

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()

    def _histories(self, users, exclude=None):
        """``[B, W]`` history items per row, real items first, 0-padded; W <= max_history_len.

        Longer histories keep a random subset: fresh in training, fixed in evaluation.
        ``exclude`` (one item per row) is removed from the row's history.
        """
        history = self.history_items[users]
        real = history > 0
        if exclude is not None:
            real &= history != exclude.unsqueeze(1)
        keys = torch.rand(history.shape, device=history.device) if self.training else self.history_keys[users]
        keys = keys.masked_fill(~real, 2.0)
        width = min(self.max_history_len, int(real.sum(1).max()) if len(users) else 0)
        picked = keys.argsort(dim=1)[:, :width]
        return history.gather(1, picked) * real.gather(1, picked)

    def _encode(self, sequences, markets):
        """Logits of ``[b, 1 + w]`` sequences whose position 0 is the candidate."""
        padding = sequences == 0
        if self.fused and bool((padding[:, :-1] & ~padding[:, 1:]).any()):
            # the fused kernels take real positions first; order does not matter to the layers (no positions)
            sequences = sequences.gather(1, torch.argsort(padding.to(torch.int8), dim=1, stable=True))
            padding = sequences == 0
        x = self.item_embedding(sequences)
        if self.market_embedding is not None:
            x = x + self.market_embedding(markets).unsqueeze(1)
        x = self.embedding_dropout(self.embedding_norm(x))
        if self.fused:  # attention maps are never stored: nothing to recompute
            lengths = (~padding).sum(1)
            for layer in self.layers:
                x = fused_layer_forward(layer, x, lengths)
            return self._score(x, padding)
        attention_bias = torch.zeros(padding.shape, dtype=x.dtype, device=x.device)
        attention_bias = attention_bias.masked_fill(padding, float("-inf"))[:, None, None, :]
        # Wide training buckets recompute their layers in backward instead of keeping the
        # attention maps: peak memory stays bounded at ~2% more time (RNG state is replayed).
        attention_floats = x.shape[0] * self.n_heads * x.shape[1] ** 2
        recompute = self.training and torch.is_grad_enabled() and attention_floats > RECOMPUTE_ATTENTION_FLOATS
        for layer in self.layers:
            x = checkpoint(layer, x, attention_bias, use_reentrant=False) if recompute else layer(x, attention_bias)
        return self._score(x, padding)

    def _score(self, x, padding):
        """Logits from the encoded sequences: mean of the history outputs, concatenated with the candidate's."""
        history_mask = (~padding[:, 1:]).unsqueeze(-1).to(x.dtype)
        user = (x[:, 1:] * history_mask).sum(1) / history_mask.sum(1).clamp(min=1.0)
        return self.prediction(torch.cat([user, x[:, 0]], dim=-1)).squeeze(-1)

    def forward(self, users, items, exclude=None):
        history = self._histories(users, exclude)
        lengths = (history > 0).sum(1)
        logits = torch.empty(len(users), device=history.device)
        for bucket in lengths.argsort().split(self.bucket_rows):
            width = int(lengths[bucket].max())
            sequences = torch.cat([items[bucket].unsqueeze(1), history[bucket, :width]], dim=1)
            logits[bucket] = self._encode(sequences, self.user_market[users[bucket]])
        return logits

    def calculate_loss(self, interaction):
        users, items = interaction[self.USER_ID], interaction[self.ITEM_ID]
        labels = interaction[self.LABEL]
        exclude = None
        if not self.history_keeps_positive:
            # RecBole lays out a point-wise batch as [positives, then each block of negatives],
            # so row r belongs to positive r % n_pos: its context must not hold that positive.
            n_pos = int(labels.sum())
            if not bool(labels[:n_pos].all()):
                raise RuntimeError("unexpected batch layout: positives must come first")
            exclude = items[torch.arange(len(items), device=items.device) % n_pos]
        return self.loss_fct(self.forward(users, items, exclude), labels)

    def predict(self, interaction):
        return torch.sigmoid(self.forward(interaction[self.USER_ID], interaction[self.ITEM_ID]))

    def score_history(self, history, market, candidates):
        """Probabilities of ``candidates`` for a user the model never saw, from the item ids of their history
        (the last ``max_history_len``) and their market id: the user vector needs nothing else."""
        history = history[history > 0][-self.max_history_len:]
        logits = []
        for chunk in candidates.split(self.bucket_rows):
            sequences = torch.cat([chunk.unsqueeze(1), history.expand(len(chunk), -1)], dim=1)
            logits.append(self._encode(sequences, torch.full((len(chunk),), int(market), dtype=torch.int64)))
        return torch.sigmoid(torch.cat(logits))

    def attention_to_history(self, user, candidates):
        """For one user: the last layer's attention (mean over heads) from each candidate's position to the
        user's history items, ``[len(candidates), w]``, the history item ids and the candidates' probabilities
        (eval mode, PyTorch's ops: the fused kernels never form the attention map)."""
        history = self._histories(user.view(1))[0]
        history = history[history > 0]
        sequences = torch.cat([candidates.unsqueeze(1), history.expand(len(candidates), -1)], dim=1)
        x = self.item_embedding(sequences)
        if self.market_embedding is not None:
            x = x + self.market_embedding(self.user_market[user]).view(1, 1, -1)
        x = self.embedding_dropout(self.embedding_norm(x))
        bias = torch.zeros(len(candidates), 1, 1, sequences.shape[1])
        for layer in self.layers[:-1]:
            x = layer(x, bias)
        x, weights = self.layers[-1](x, bias, return_attention=True)
        scores = torch.sigmoid(self._score(x, torch.zeros_like(sequences, dtype=torch.bool)))
        return weights.mean(1)[:, 0, 1:], history, scores

    def write_pictures(self, dataset, folder, title, seed):
        """An item-embedding map coloured by the markets selling each item, and one test user's attention."""
        from recbole_cmr.plots import attention_heatmap, item_map

        self.eval()
        markets = dataset.inter_feat[dataset.market_field].numpy()
        items = dataset.inter_feat[dataset.iid_field].numpy()
        sold_in = [set() for _ in range(dataset.item_num)]
        for item, market in zip(items.tolist(), markets.tolist()):
            sold_in[item].add(market)
        names = dataset.field2id_token[dataset.market_field]
        item_map(self.item_embedding.weight.detach().numpy(), sold_in, names, os.path.join(folder, "item_map.png"),
                 f"{title}: item embeddings (t-SNE)", seed)
        target_users = np.flatnonzero(dataset.user_market == dataset.target_market_id)
        lengths = (self.history_items[torch.as_tensor(target_users)] > 0).sum(1)
        user = int(target_users[int(torch.argmax((lengths >= 5).to(torch.int8)))])  # first with 5+ history items
        mine = items[dataset.inter_feat[dataset.uid_field].numpy() == user]
        held_out = np.setdiff1d(mine, self.history_items[user].numpy())  # the user's valid and test items
        others = np.setdiff1d(dataset.target_items, mine)
        drawn = np.random.default_rng(seed).choice(others, size=min(6 - len(held_out), len(others)), replace=False)
        candidates = torch.as_tensor(np.concatenate([held_out, drawn]))
        with torch.no_grad():
            weights, history, scores = self.attention_to_history(torch.tensor(user), candidates)
        token = lambda i: dataset.id2token(dataset.iid_field, int(i))  # noqa: E731
        labels = [f"{token(c)}{' (held out)' if c in held_out else ''}: p={s:.2f}"
                  for c, s in zip(candidates.tolist(), scores.tolist())]
        attention_heatmap(weights.numpy(), labels,
                          [token(i) for i in history], os.path.join(folder, "attention.png"),
                          f"{title}: last layer's attention of user {dataset.id2token(dataset.uid_field, user)}")

    def full_sort_predict(self, interaction):
        """Scores of the target market's items; other items get -inf (full ranking is per market)."""
        users = interaction[self.USER_ID]
        candidates = self.target_items
        rows_users = users.repeat_interleave(len(candidates))
        rows_items = candidates.repeat(len(users))
        scores = torch.full((len(users), self.n_items), float("-inf"), device=users.device)
        scores[:, candidates] = torch.sigmoid(self.forward(rows_users, rows_items)).view(len(users), -1)
        return scores.view(-1)
