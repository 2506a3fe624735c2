"""CrossMarketDataset: RecBole's Dataset with a market field and a leave-one-out cross-market split."""

import glob
import hashlib
import os

import numpy as np
import pandas as pd
import torch
from recbole.data.dataset import Dataset, SequentialDataset
from recbole.data.interaction import Interaction
from recbole.utils import FeatureType, ModelType

from recbole_cmr.utils import CrossMarketError

TRAIN_SCOPES = ("all", "target", "source")
SPLIT_ORDERS = ("random", "time")


class CrossMarketDataset(Dataset):
    """All markets in one RecBole dataset; valid and test come from the target market only.

    ``build()`` splits each target-market user leave-one-out (last item -> test,
    second last -> valid, the rest -> train) after ordering the user's items at
    random or by time, seeded by ``split_seed`` (default ``seed``). Every
    interaction of a source market goes to train. What the returned train
    dataset holds is the training scope ``train_markets``:
    ``all`` (source + target train, the paper's "++"), ``target`` (the paper's
    "single"), ``source`` (no target data: cold-start pre-training).
    """

    def _get_field_from_config(self):
        super()._get_field_from_config()
        self.market_field = self.config["MARKET_FIELD"]

    def _load_data(self, token, dataset_path):
        inter_path = os.path.join(dataset_path, f"{token}.inter")
        if not os.path.isfile(inter_path):
            raise CrossMarketError(
                f"atomic file {inter_path} does not exist; set data_path/dataset to a folder holding "
                f"'<dataset>/<dataset>.inter', or rebuild it with "
                f"'python -m recbole_cmr.data.convert <folder of <market>_5core.txt>'"
            )
        self._check_header(inter_path)
        self._check_lines(inter_path)
        try:
            super()._load_data(token, dataset_path)
        except (ValueError, KeyError, pd.errors.ParserError) as err:
            not_a_number = self._first_non_number(inter_path)
            if not_a_number:
                number, field, value = not_a_number
                raise CrossMarketError(f"atomic file {inter_path}: line {number} has {field} {value!r}, not a "
                                       f"number; write a number there or remove the line") from err
            raise CrossMarketError(
                f"malformed atomic file {inter_path}: {err}. The header must name typed fields such as "
                "'user_id:token item_id:token rating:float timestamp:float market:token', "
                "one tab-separated value per field on every line"
            ) from err
        missing = [f for f in (self.uid_field, self.iid_field, self.market_field) if f not in self.inter_feat]
        if missing:
            roles = {self.uid_field: ("USER_ID_FIELD", "the user"), self.iid_field: ("ITEM_ID_FIELD", "the item"),
                     self.market_field: ("MARKET_FIELD", "the interaction's market")}
            key, what = roles[missing[0]]
            raise CrossMarketError(
                f"atomic file {inter_path} has no field(s) {missing}; add a '{missing[0]}:token' column naming "
                f"{what} of each row (see 'python -m recbole_cmr.data.convert'), or point {key} at the column "
                "that holds it"
            )
        self.raw_markets = set(self.inter_feat[self.market_field].astype(str).str.lower())
        self._check_rows(inter_path)
        self._lower_case_markets(inter_path)
        self._check_one_market_per_user(inter_path)

    def _check_header(self, inter_path):
        """The header line RecBole would misread (or read with a wrong field name) stops here, named."""
        with open(inter_path, "rb") as f:
            first = f.readline()
        if first.startswith(b"\xef\xbb\xbf"):
            raise CrossMarketError(f"atomic file {inter_path} starts with a byte-order mark (a UTF-8 file saved by "
                                   "some spreadsheet programs); save it as UTF-8 without BOM")
        fields = first.decode("utf-8", errors="replace").rstrip("\r\n").split("\t")
        if fields == [""]:
            raise CrossMarketError(f"atomic file {inter_path} is empty; it needs a header line such as "
                                   "'user_id:token item_id:token rating:float timestamp:float market:token' "
                                   "(tab-separated) and one line per interaction")
        types = {t.value for t in FeatureType}
        untyped = [f for f in fields if f.rpartition(":")[2] not in types]
        if untyped:
            raise CrossMarketError(f"atomic file {inter_path}: header field {untyped[0]!r} has no known type; write "
                                   f"each field as name:type with a type of {', '.join(sorted(types))} "
                                   "(e.g. user_id:token)")
        names = [f.rpartition(":")[0] for f in fields]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise CrossMarketError(f"atomic file {inter_path}: the header names {repeated[0]!r} twice; "
                                   "give each field once")
        wanted = {self.uid_field: "token", self.iid_field: "token", self.market_field: "token",
                  self.config["RATING_FIELD"]: "float", self.config["TIME_FIELD"]: "float"}
        for field in fields:
            name, _, kind = field.rpartition(":")
            if wanted.get(name, kind) != kind:
                raise CrossMarketError(f"atomic file {inter_path}: header field {field!r} must be "
                                       f"'{name}:{wanted[name]}' (one {wanted[name]} per row)")

    @staticmethod
    def _check_lines(inter_path):
        """Lines RecBole's CSV reader would merge, cut or unquote without a word: quote characters (a quoted
        field may swallow the lines after it) and lines with more or fewer tab-separated fields than the header."""
        with open(inter_path, "rb") as f:
            width = f.readline().count(b"\t") + 1
            for number, line in enumerate(f, 2):
                if b'"' in line:
                    raise CrossMarketError(f"atomic file {inter_path}: line {number} holds a double quote, which the "
                                           "reader takes as CSV quoting (a token could absorb the lines after it); "
                                           "remove or replace the quote characters")
                fields = line.rstrip(b"\r\n").count(b"\t") + 1
                if fields != width and line.strip():
                    raise CrossMarketError(f"atomic file {inter_path}: line {number} has {fields} tab-separated "
                                           f"fields where the header has {width}; give every line one value per "
                                           "header field")

    @staticmethod
    def _first_non_number(inter_path):
        """``(line number, field, value)`` of the first value of a float field that is not a number, or None."""
        with open(inter_path, encoding="utf-8", errors="replace") as f:
            header = f.readline().rstrip("\r\n").split("\t")
            floats = [i for i, field in enumerate(header) if field.rpartition(":")[2] == "float"]
            for number, line in enumerate(f, 2):
                values = line.rstrip("\r\n").split("\t")
                for i in floats:
                    if i < len(values) and values[i].strip():
                        try:
                            float(values[i])
                        except ValueError:
                            return number, header[i], values[i]
        return None

    def _check_rows(self, inter_path):
        """Refuse rows RecBole would drop or misread without a word: none is silently lost."""
        feat = self.inter_feat
        if feat.empty:
            raise CrossMarketError(f"atomic file {inter_path} has a header but no rows; add interactions")
        empty = feat.isna() | feat.apply(lambda column: column.astype(str).str.strip() == "")
        bad = empty.any(axis=1).to_numpy()
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            fields = [c for c in feat.columns if empty[c].iloc[first]]
            raise CrossMarketError(
                f"atomic file {inter_path}: line {first + 2} has no value for {', '.join(fields)} "
                f"({int(bad.sum())} such row(s)): an empty field, or a word the reader takes for a missing value "
                f"(NaN, NA, NULL, None, n/a, ...); every row needs a value in each of the header's "
                f"{len(feat.columns)} tab-separated fields: fill or remove those rows"
            )
        for field in feat.columns[feat.dtypes.map(lambda t: np.issubdtype(t, np.number))]:
            infinite = ~np.isfinite(feat[field].to_numpy(dtype=float))
            if infinite.any():
                first = int(np.flatnonzero(infinite)[0])
                raise CrossMarketError(f"atomic file {inter_path}: line {first + 2} has {field} "
                                       f"{feat[field].iloc[first]} ({int(infinite.sum())} such row(s)); "
                                       f"{field} must be a finite number")
        for field in (self.uid_field, self.iid_field, self.market_field):
            text = feat[field].astype(str)
            padded = (text != text.str.strip()).to_numpy()
            if padded.any():
                first = int(np.flatnonzero(padded)[0])
                raise CrossMarketError(
                    f"atomic file {inter_path}: line {first + 2} has blanks around its {field} "
                    f"{text.iloc[first]!r} ({int(padded.sum())} such row(s)); '{text.iloc[first].strip()}' and "
                    f"{text.iloc[first]!r} would be two different {field} values: remove the blanks"
                )
        duplicates = feat.duplicated([self.uid_field, self.iid_field]).to_numpy()
        if duplicates.any():
            first = int(np.flatnonzero(duplicates)[0])
            raise CrossMarketError(
                f"atomic file {inter_path}: line {first + 2} repeats a (user, item) pair of an earlier line "
                f"({int(duplicates.sum())} such row(s)); a repeated pair could put one interaction in both train "
                "and test: keep one row per pair (python -m recbole_cmr.data.convert keeps the earliest)"
            )

    def _lower_case_markets(self, inter_path):
        """Market names are case-insensitive: tokens are lower-cased, and tokens differing only in case refused."""
        tokens = self.inter_feat[self.market_field].astype(str)
        distinct = sorted(tokens.unique())
        by_lower = {}
        for token in distinct:
            by_lower.setdefault(token.lower(), []).append(token)
        clashes = [names for names in by_lower.values() if len(names) > 1]
        if clashes:
            raise CrossMarketError(
                f"atomic file {inter_path}: market names {' / '.join(repr(n) for n in clashes[0])} differ only in "
                "case; market names are case-insensitive, so write each market one way"
            )
        changed = [t for t in distinct if t != t.lower()]
        if changed:
            self.logger.info(f"market names lower-cased: {', '.join(changed)} (markets are case-insensitive)")
            self.inter_feat[self.market_field] = tokens.str.lower()

    def _check_one_market_per_user(self, inter_path):
        """Users are per market: a user token with rows in two markets would be split between target and
        source data without a word."""
        markets = self.inter_feat.groupby(self.uid_field)[self.market_field].unique()
        spread = markets[markets.map(len) > 1]
        if len(spread):
            raise CrossMarketError(
                f"atomic file {inter_path}: user {spread.index[0]!r} has rows in markets "
                f"{', '.join(sorted(spread.iloc[0]))} ({len(spread)} such user(s)); users are per market: give each "
                "market's users their own tokens (python -m recbole_cmr.data.convert prefixes them with the market)"
            )

    def _reset_index(self):
        if self.inter_feat.empty:  # RecBole's own message blames "some feat"
            raise CrossMarketError(
                f"no interaction is left after filtering (user_inter_num_interval: "
                f"{self.config['user_inter_num_interval']}, ...); the data has too few interactions per user for "
                "a leave-one-out split: add data or loosen the filters"
            )
        super()._reset_index()

    @property
    def markets(self):
        """Market names known to the dataset, in id order."""
        return list(self.field2id_token[self.market_field][1:])

    def market_id(self, name):
        """Id of a market name; unknown names list the known ones."""
        name = str(name).lower()
        if name not in self.field2token_id[self.market_field] and name in getattr(self, "raw_markets", ()):
            raise CrossMarketError(
                f"market {name!r} has no interaction left after filtering (user_inter_num_interval: "
                f"{self.config['user_inter_num_interval']}, item_inter_num_interval: "
                f"{self.config['item_inter_num_interval']}); loosen the filters or add data"
            )
        if name not in self.field2token_id[self.market_field]:
            raise CrossMarketError(
                f"unknown market {name!r}; the dataset {self.dataset_name!r} has markets: {', '.join(self.markets)}"
            )
        return self.field2token_id[self.market_field][name]

    def _market_settings(self):
        """Validated (target id, source ids, train scope, split order)."""
        target = self.config["target_market"]
        if target is None:
            raise CrossMarketError(f"no target market; pass --market=<one of {', '.join(self.markets)}>")
        target_id = self.market_id(target)
        sources = self.config["source_markets"]
        if sources is None:
            source_ids = [self.market_id(m) for m in self.markets if m != target]
        else:
            if target in sources:
                raise CrossMarketError(
                    f"target market {target!r} is also listed in source_markets {sources}; "
                    "the target's own training data is added by train_markets, so remove it from source_markets"
                )
            source_ids = [self.market_id(m) for m in sources]
        scope = str(self.config["train_markets"]).lower()
        if scope not in TRAIN_SCOPES:
            raise CrossMarketError(f"unknown train_markets {scope!r}; choose one of {', '.join(TRAIN_SCOPES)}")
        if scope == "source" and not source_ids:
            raise CrossMarketError("train_markets: source trains on the source markets, but there are none; "
                                   "list some in source_markets (or use train_markets: target)")
        order = str(self.config["split_order"]).lower()
        if order not in SPLIT_ORDERS:
            raise CrossMarketError(f"unknown split_order {order!r}; choose one of {', '.join(SPLIT_ORDERS)}")
        return target_id, source_ids, scope, order

    def split_indices(self):
        """Row indices of the split: ``source``, ``target_train``, ``valid``, ``test``.

        Computed from the interaction table only, so it is identical for every
        model given the same seed and settings.
        """
        target_id, source_ids, _, order = self._market_settings()
        feat = self.inter_feat
        users = np.asarray(feat[self.uid_field])
        markets = np.asarray(feat[self.market_field])
        seed = self.config["split_seed"]
        rng = np.random.default_rng(int(seed))

        rows = rng.permutation(np.flatnonzero(markets == target_id))
        if order == "time":
            rows = rows[np.argsort(np.asarray(feat[self.time_field])[rows], kind="stable")]
        rows = rows[np.argsort(users[rows], kind="stable")]
        row_users = users[rows]
        is_last = np.r_[row_users[1:] != row_users[:-1], True]
        is_second_last = np.r_[is_last[1:] & (row_users[1:] == row_users[:-1]), False]

        _, counts = np.unique(row_users, return_counts=True)
        if len(counts) == 0 or counts.min() < 3:
            short = int((counts < 3).sum()) if len(counts) else 0
            raise CrossMarketError(
                f"target market {self.config['target_market']!r} cannot be split leave-one-out: "
                f"{short} user(s) have fewer than 3 interactions (one train, one valid, one test item are needed); "
                "keep user_inter_num_interval: \"[3,inf)\" to drop such users"
            )
        return {
            "source": np.flatnonzero(np.isin(markets, source_ids)),
            "target_train": np.sort(rows[~is_last & ~is_second_last]),
            "valid": np.sort(rows[is_second_last]),
            "test": np.sort(rows[is_last]),
        }

    def build(self):
        """Return [train, valid, test] datasets; train follows ``train_markets``.

        Every returned dataset also carries what the split knows about the whole
        data: ``target_market_id``, ``target_items`` (items sold in the target
        market), ``user_market`` (market id of each user) and ``history_dataset``
        (the full training split, source + target train), which is what models
        may read as a user's history whatever the training scope.
        """
        self._change_feat_format()
        target_id, _, scope, _ = self._market_settings()
        index = self.split_indices()
        users = self.inter_feat[self.uid_field].numpy()
        markets = self.inter_feat[self.market_field].numpy()
        self.target_market_id = target_id
        self.target_items = np.unique(self.inter_feat[self.iid_field].numpy()[markets == target_id])
        self.user_market = np.zeros(self.user_num, dtype=np.int64)
        self.user_market[users] = markets
        full_train = np.sort(np.concatenate([index["source"], index["target_train"]]))
        self.history_dataset = self.copy(self.inter_feat[full_train])
        self.history_dataset.history_dataset = self.history_dataset
        train_rows = {"all": full_train, "target": index["target_train"], "source": index["source"]}[scope]
        return [self.copy(self.inter_feat[rows]) for rows in (train_rows, index["valid"], index["test"])]

    def train_history(self):
        """Each user's training items as a padded ``[user_num, max_len]`` tensor plus lengths.

        Read from the full training split, so valid and test items never appear.
        """
        items, _, lengths = self.history_dataset.history_item_matrix()
        return items, lengths


class CrossMarketSequentialDataset(CrossMarketDataset, SequentialDataset):
    """The same split for RecBole's sequential models (SASRec, BERT4Rec, ...).

    Items of a user are put in date order, same-day ties in a seeded random
    order. A training row predicts one training item from the user's earlier
    training items; the valid row predicts the valid item from all training
    items; the test row predicts the test item from the training and valid
    items. A user's first training item has no history and is not a row.
    """

    def _change_feat_format(self):
        Dataset._change_feat_format(self)  # the augmentation happens after the split

    def build(self):
        super().build()
        self._aug_presets()
        feat = self.inter_feat
        users = feat[self.uid_field].numpy()
        seed = self.config["split_seed"]
        tie_break = np.random.default_rng(int(seed) + 7).permutation(len(feat))
        order = np.lexsort((tie_break, feat[self.time_field].numpy(), users))
        index = self.split_indices()
        role = np.zeros(len(feat), dtype=np.int8)  # 0 train, 1 valid, 2 test
        role[index["valid"]], role[index["test"]] = 1, 2
        train_rows = {"all": None, "target": index["target_train"], "source": index["source"]}
        keep_train = train_rows[str(self.config["train_markets"]).lower()]
        keep_train = None if keep_train is None else set(keep_train.tolist())
        samples = {0: [], 1: [], 2: []}  # role -> [(row, history rows)]
        start = 0
        while start < len(order):
            end = start
            while end < len(order) and users[order[end]] == users[order[start]]:
                end += 1
            rows = order[start:end]
            seen_train = [r for r in rows if role[r] == 0]
            before_test = [r for r in rows if role[r] != 2]
            for position, r in enumerate(seen_train[1:], 1):
                if keep_train is None or r in keep_train:
                    samples[0].append((r, seen_train[:position]))
            for r in rows[role[rows] == 1]:
                samples[1].append((r, seen_train))
            for r in rows[role[rows] == 2]:
                samples[2].append((r, before_test))
            start = end
        return [self.copy(self._sequence_rows(samples[role_id])) for role_id in (0, 1, 2)]

    def _sequence_rows(self, samples):
        """Interaction rows with ``item_id_list``/``item_length`` (last ``MAX_ITEM_LIST_LENGTH`` items)."""
        items = self.inter_feat[self.iid_field].numpy()
        target = np.array([r for r, _ in samples], dtype=np.int64)
        lists = np.zeros((len(samples), self.max_item_list_len), dtype=np.int64)
        lengths = np.zeros(len(samples), dtype=np.int64)
        for i, (_, history) in enumerate(samples):
            history = items[np.asarray(history[-self.max_item_list_len:], dtype=np.int64)]
            lists[i, : len(history)] = history
            lengths[i] = len(history)
        rows = self.inter_feat[torch.from_numpy(target)]
        rows.update(Interaction({self.item_id_list_field: torch.from_numpy(lists),
                                 self.item_list_length_field: torch.from_numpy(lengths)}))
        return rows


def create_dataset(config):
    """The cross-market dataset class that fits the model type."""
    if config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
        return CrossMarketSequentialDataset(config)
    return CrossMarketDataset(config)


def atomic_files_digest(config):
    """SHA-256 of each of the dataset's atomic files: a saved run records them, and using the run later on
    changed data is refused (a closed-form model would be refitted on other rows without a word)."""
    folder, name = config["data_path"], config["dataset"]
    digests = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(folder), glob.escape(name) + ".*"))):
        with open(path, "rb") as f:
            digests[os.path.basename(path)] = hashlib.file_digest(f, "sha256").hexdigest()
    return digests
