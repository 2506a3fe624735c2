"""Evaluation protocols on RecBole's own samplers and evaluation dataloaders.

A protocol is one :class:`Protocol` entry in ``PROTOCOLS`` (add one with
:func:`register_protocol`): its candidate pool, and whether the whole pool is
ranked or ``eval_neg_num`` negatives are drawn from it per valid/test positive.

- ``paper``: 99 negatives per valid/test positive, uniform over the items of all
  markets, none of them an item of the user (what the ACMR paper did).
- ``market``: 99 negatives uniform over the target market's items, none of them
  an item of the user.
- ``full``: every target-market item is ranked; the user's known items are
  masked as in RecBole's full sort, and so is every item the target market
  never sold.

Negatives are drawn once per (phase, user) from ``split_seed``, so every model
evaluated on the same split meets exactly the same candidates.
"""

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from recbole.data.dataloader import FullSortEvalDataLoader, NegSampleEvalDataLoader, TrainDataLoader
from recbole.data.interaction import Interaction
from recbole.sampler import Sampler

from recbole_cmr.utils import CrossMarketError

EVAL_PHASES = ("valid", "test")


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol: the candidate items of a split, and how many of them a user meets."""

    name: str
    pool: Callable  # (built CrossMarketDataset) -> candidate item ids
    full_ranking: bool  # True: rank the whole pool; False: eval_neg_num negatives drawn from it
    description: str

    def eval_mode(self, neg_num):
        """RecBole's ``eval_args.mode`` for this protocol."""
        return "full" if self.full_ranking else f"uni{int(neg_num)}"


#: Protocols by name; the config, the runner, the grid and the command line all read this.
PROTOCOLS = {}


def register_protocol(protocol):
    """Make ``protocol`` available as ``eval_protocol: <name>`` everywhere."""
    PROTOCOLS[protocol.name] = protocol
    return protocol


register_protocol(Protocol("paper", lambda dataset: np.arange(1, dataset.item_num), False,
                           "eval_neg_num negatives from all markets' items (the ACMR paper)"))
register_protocol(Protocol("market", lambda dataset: dataset.target_items, False,
                           "eval_neg_num negatives from the target market's items"))
register_protocol(Protocol("full", lambda dataset: dataset.target_items, True,
                           "every target-market item ranked"))


def get_protocol(name):
    """The registered protocol ``name`` (case-insensitive), or say which exist."""
    protocol = PROTOCOLS.get(str(name).lower())
    if protocol is None:
        raise CrossMarketError(f"unknown eval_protocol {name!r}; choose one of {', '.join(PROTOCOLS)} "
                               "(e.g. --protocol=market)")
    return protocol


class ProtocolSampler(Sampler):
    """RecBole Sampler whose valid/test negatives are fixed draws from a protocol's item pool."""

    def __init__(self, datasets, pool, num, seed, where=""):
        super().__init__(["train", "valid", "test"], list(datasets), distribution="uniform")
        self.pool = np.asarray(pool, dtype=np.int64)
        self.where = where  # the target market and protocol, for the message of a user with too few candidates
        self.fixed_negatives = {phase: self._draw(phase_dataset, num, seed + offset)
                                for offset, (phase, phase_dataset) in enumerate(zip(EVAL_PHASES, datasets[1:]), 1)}

    def _draw(self, phase_dataset, num, seed):
        """``[user_num, num]`` negatives for the users of one phase (-1 for other users)."""
        rng = np.random.default_rng(seed)
        negatives = np.full((self.user_num, num), -1, dtype=np.int64)
        all_items_of_user = self.used_ids["test"]
        for uid in np.unique(phase_dataset.inter_feat[self.uid_field].numpy()):
            candidates = np.setdiff1d(self.pool, np.fromiter(all_items_of_user[uid], dtype=np.int64))
            if len(candidates) < num:
                user = phase_dataset.id2token(self.uid_field, uid)
                raise CrossMarketError(
                    f"only {len(candidates)} candidate negatives for user {user!r}{self.where} (a pool of "
                    f"{len(self.pool)} items less the user's own), {num} needed; lower eval_neg_num or use "
                    "eval_protocol: full"
                )
            negatives[uid] = rng.choice(candidates, size=num, replace=False)
        return negatives

    def sample_by_user_ids(self, user_ids, item_ids, num):
        """Fixed negatives, laid out as RecBole's samplers do: ``[num, len(user_ids)]`` flattened."""
        negatives = self.fixed_negatives[self.phase][np.asarray(user_ids)][:, :num]
        if (negatives < 0).any():
            raise RuntimeError("asked for evaluation negatives of a user outside this phase")
        return torch.from_numpy(np.ascontiguousarray(negatives.T).reshape(-1))


class MarketFullSortEvalDataLoader(FullSortEvalDataLoader):
    """RecBole's full-sort loader that also masks every item outside the protocol's pool, and gives each user
    row the user's market: models without ``full_sort_predict`` (context-aware ones such as WideDeep) are scored
    by RecBole on these rows repeated per item, and they embed the market field."""

    def __init__(self, config, dataset, sampler, shuffle=False):
        super().__init__(config, dataset, sampler, shuffle=shuffle)
        outside = np.ones(dataset.item_num, dtype=bool)
        outside[sampler.pool] = False
        outside[0] = False
        self.outside_items = torch.from_numpy(np.flatnonzero(outside))
        self.user_market = torch.from_numpy(dataset.user_market)

    def collate_fn(self, index):
        user_df, history, positive_u, positive_i = super().collate_fn(index)
        user_df.update(Interaction({self._dataset.market_field: self.user_market[user_df[self.uid_field]]}))
        n_users = len(user_df)
        if history is None:  # sequential models: RecBole masks nothing; mask the user's known items as for the others
            users = user_df[self.uid_field].tolist()
            known = [torch.tensor(sorted(self._sampler.used_ids[u] - {int(i)}), dtype=torch.int64)
                     for u, i in zip(users, positive_i.tolist())]
            history = (torch.cat([torch.full_like(k, row) for row, k in enumerate(known)]), torch.cat(known))
        history_u, history_i = history
        outside_u = torch.arange(n_users).repeat_interleave(len(self.outside_items))
        outside_i = self.outside_items.repeat(n_users)
        return user_df, (torch.cat([history_u, outside_u]), torch.cat([history_i, outside_i])), positive_u, positive_i


def eval_dataloaders(config, dataset, built_datasets):
    """Valid and test dataloaders for ``config['eval_protocol']``."""
    train, valid, test = built_datasets
    seed = config["split_seed"]
    protocol = get_protocol(config["eval_protocol"])
    sampler = ProtocolSampler(
        [dataset.history_dataset, valid, test], protocol.pool(dataset), int(config["eval_neg_num"]), int(seed),
        where=f" of market {config['target_market']!r} under eval_protocol {protocol.name}",
    )
    loader = MarketFullSortEvalDataLoader if protocol.full_ranking else NegSampleEvalDataLoader
    return (loader(config, valid, sampler.set_phase("valid"), shuffle=False),
            loader(config, test, sampler.set_phase("test"), shuffle=False))


class LengthBucketedTrainDataLoader(TrainDataLoader):
    """RecBole's TrainDataLoader whose batches hold rows of similar user-history length.

    Each epoch the rows are shuffled, every window of ``bucket_window`` batches
    is sorted by history length and cut into batches, and the batches are
    shuffled. A history model then pads each batch to about its own length
    instead of to the longest history (most rows are short, a few are long).
    """

    def __init__(self, config, dataset, sampler, user_history_len):
        super().__init__(config, dataset, sampler, shuffle=False)
        self.rows = dataset.inter_feat
        self.row_lengths = torch.as_tensor(user_history_len)[self.rows[dataset.uid_field]]
        self.window_batches = int(config["bucket_window"])

    def __iter__(self):
        order = torch.randperm(len(self.rows), generator=self.generator)
        windows = [w[torch.argsort(self.row_lengths[w], stable=True)]
                   for w in order.split(self.step * self.window_batches)]
        batches = torch.cat(windows).split(self.step)
        shuffled = torch.randperm(len(batches), generator=self.generator)
        self._dataset.inter_feat = self.rows[torch.cat([batches[i] for i in shuffled])]
        return super().__iter__()


def train_dataloader(config, train_dataset, built_datasets):
    """RecBole's TrainDataLoader with RecBole's uniform sampler over the given training rows.

    With ``bucket_window`` set (history models such as ACMR), batches are length-bucketed.
    """
    neg_args = config["train_neg_sample_args"]
    sampler = None
    if neg_args is not None and neg_args.get("distribution", "none") != "none":
        _, valid, test = built_datasets
        sampler = Sampler(["train", "valid", "test"], [train_dataset, valid, test],
                          neg_args["distribution"], neg_args.get("alpha", 1.0)).set_phase("train")
    if config["bucket_window"]:
        history = train_dataset.history_dataset
        lengths = np.bincount(history.inter_feat[history.uid_field].numpy(), minlength=history.user_num)
        return LengthBucketedTrainDataLoader(config, train_dataset, sampler, lengths)
    return TrainDataLoader(config, train_dataset, sampler, shuffle=config["shuffle"])


def data_preparation(config, dataset):
    """Split ``dataset`` and return RecBole (train, valid, test) dataloaders for the configured protocol."""
    built = dataset.build()
    valid_data, test_data = eval_dataloaders(config, dataset, built)
    return train_dataloader(config, built[0], built), valid_data, test_data
