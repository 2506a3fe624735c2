"""RecBole Config that knows the plugin's models, yaml defaults and evaluation protocols, and the checks
that refuse impossible settings before any data is read."""

import copy
import difflib
import os
import re

import numpy as np
import recbole
import torch
import yaml
from recbole.config import Config
from recbole.utils import ModelType

from recbole_cmr.data.protocol import get_protocol
from recbole_cmr.evaluator import FAIR_METRICS, UNTRAINED_ITEM_RULES
from recbole_cmr.utils import CrossMarketError, get_model

PLUGIN_PROPERTIES = os.path.join(os.path.dirname(os.path.realpath(__file__)), "properties")
SHIPPED_DATA_PATH = os.path.abspath(
    os.path.join(os.path.dirname(os.path.realpath(__file__)), os.pardir, "atomic_data")
)


class CrossMarketConfig(Config):
    """RecBole's Config with the plugin's yaml layered over RecBole's own defaults.

    Precedence stays RecBole's: command line > config dict > config files > plugin
    yaml (``properties/overall.yaml`` then ``properties/model/<model>.yaml``) > RecBole yaml.
    """

    def _get_model_and_dataset(self, model, dataset):
        if isinstance(model, str):
            model = get_model(model)
        elif model is None and isinstance(self.external_config_dict.get("model"), str):
            model = get_model(self.external_config_dict["model"])
        return super()._get_model_and_dataset(model, dataset)

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        self.internal_config_dict["data_path"] = SHIPPED_DATA_PATH
        for path in (
            os.path.join(PLUGIN_PROPERTIES, "overall.yaml"),
            os.path.join(PLUGIN_PROPERTIES, "model", f"{model}.yaml"),
        ):
            if os.path.isfile(path):
                self._update_internal_config_dict(path)
        scopes = getattr(model_class, "train_markets", None)  # a cross-market model declares its scopes once
        if scopes:
            self.internal_config_dict["train_markets"] = scopes[0]

    def _set_default_parameters(self):
        for key in ("data_path", "checkpoint_dir"):  # RecBole joins them as paths before any check
            if not isinstance(self.final_config_dict.get(key), str) or not self.final_config_dict[key].strip():
                raise CrossMarketError(f"{key} must be a folder path, got {self.final_config_dict.get(key)!r}")
        protocol = get_protocol(self.final_config_dict.get("eval_protocol"))
        self.final_config_dict["eval_protocol"] = protocol.name
        mode = protocol.eval_mode(self.final_config_dict["eval_neg_num"])
        eval_args = dict(self.final_config_dict.get("eval_args") or {})
        eval_args["mode"] = {"valid": mode, "test": mode}
        self.final_config_dict["eval_args"] = eval_args
        if self.final_config_dict.get("target_market") is not None:
            self.final_config_dict["target_market"] = str(self.final_config_dict["target_market"]).lower()
        sources = self.final_config_dict.get("source_markets")
        if sources is not None:
            if isinstance(sources, str):
                sources = [s for s in sources.replace(",", " ").split() if s]
            self.final_config_dict["source_markets"] = [str(s).lower() for s in sources]
        if self.final_config_dict.get("split_seed") is None:  # the split follows the run's seed by default
            self.final_config_dict["split_seed"] = self.final_config_dict.get("seed")
        self.final_config_dict["checkpoint_dir"] = os.path.abspath(self.final_config_dict["checkpoint_dir"])
        for key in ("metrics", "topk"):  # RecBole refuses them with a traceback or without saying what it takes
            value = self.final_config_dict.get(key)
            accepts, what = SETTING_RULES[key]
            if value is not None and not accepts(value if isinstance(value, list) else [value]):
                raise CrossMarketError(f"impossible settings: {key} must be {what}, got {value!r}")
        super()._set_default_parameters()
        self.final_config_dict["data_path"] = os.path.abspath(self.final_config_dict["data_path"])


def read_config_file(path):
    """A config yaml as a dict, or one error saying what is wrong with the file."""
    if os.path.isdir(path):
        raise CrossMarketError(f"config file {path} is a folder; pass yaml files (comma separated)")
    try:
        with open(path, encoding="utf-8") as f:
            loaded = yaml.load(f, Loader=yaml.FullLoader)  # RecBole's loader family
    except FileNotFoundError:
        raise CrossMarketError(f"config file {path} does not exist") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise CrossMarketError(f"config file {path} is not valid yaml: {' '.join(str(err).split())}") from None
    if not isinstance(loaded, dict):
        what = "nothing" if loaded is None else f"a {type(loaded).__name__}"
        raise CrossMarketError(f"config file {path} holds {what}; it must map config keys to values "
                               "(e.g. 'learning_rate: 0.001')")
    return loaded


def config_key_models():
    """Every key a shipped yaml defines -> the models whose yaml defines it, or None for a key of every run."""
    owners = {}
    roots = (os.path.join(os.path.dirname(recbole.__file__), "properties"), PLUGIN_PROPERTIES)
    for folder, _, names in (entry for root in roots for entry in os.walk(root)):
        for name in (n for n in names if n.endswith(".yaml")):
            model = name[:-len(".yaml")] if os.path.basename(folder) == "model" else None
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                keys = yaml.load(f, Loader=yaml.FullLoader) or {}
            for key in keys:
                if model is None:
                    owners[key] = None
                elif key not in owners or owners[key] is not None:
                    owners.setdefault(key, set()).add(model)
    return owners


#: Keys a run takes that no yaml defines (RecBole's Config gets them as arguments).
ARGUMENT_KEYS = {"model", "dataset"}
#: Keys of a search file (``--tune``), which a config file passed by mistake would silently drop.
SEARCH_FILE_KEYS = {"space", "fixed", "num_samples", "scheduler", "search", "grace_period", "resources_per_trial"}


def did_you_mean(word, options):
    """`` (did you mean X?)`` for a close option, else an empty string."""
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def check_config_file_keys(path, content):
    """Refuse a config file key no yaml defines: a typo would otherwise become a new, unused key."""
    known = set(config_key_models()) | ARGUMENT_KEYS
    unknown = [key for key in content if key not in known]
    if not unknown:
        return
    search_keys = sorted(set(unknown) & SEARCH_FILE_KEYS)
    if search_keys:
        raise CrossMarketError(f"config file {path} is a search file ({', '.join(search_keys)}); pass it as "
                               "--tune=FILE, or write its settings as plain 'key: value' lines")
    raise CrossMarketError(f"config file {path}: unknown key {unknown[0]!r}{did_you_mean(unknown[0], known)}; a "
                           "config file sets keys that "
                           "RecBole's, the plugin's or a model's yaml defines")


def known_config_keys(config_file_list=None):
    """Every key a yaml defines (RecBole's, the plugin's, the given files'): a command-line key outside it is a typo."""
    keys = set(config_key_models())
    for path in config_file_list or []:
        keys.update(read_config_file(path))
    return keys


#: RecBole keys the plugin sets from its own: a user's value would be silently replaced.
PLUGIN_SET_KEYS = {
    "eval_args": "the split is the plugin's leave-one-out of each target user's last two items, and the mode "
                 "follows eval_protocol",
    "valid_neg_sample_args": "valid candidates follow eval_protocol and eval_neg_num",
    "test_neg_sample_args": "test candidates follow eval_protocol and eval_neg_num",
}


def check_overrides_fit(keys, models, config_file_list=None):
    """Refuse a user setting that would be silently unused: one the plugin sets itself, or a model
    hyper-parameter that none of ``models`` has."""
    owners = config_key_models()
    given = {str(m).lower() for m in models}
    for path in config_file_list or []:
        in_file = read_config_file(path)
        keys = [*keys, *(key for key in in_file if key in PLUGIN_SET_KEYS)]
        owners.update({key: None for key in in_file})
    for key in keys:
        if key in PLUGIN_SET_KEYS:
            raise CrossMarketError(f"{key} is set by recbole-cmr ({PLUGIN_SET_KEYS[key]}); drop it")
        if owners.get(key) and not {m.lower() for m in owners[key]} & given:
            names = sorted(owners[key], key=str.lower)
            holders = ", ".join(names) if len(names) <= 4 else f"{', '.join(names[:3])} and {len(names) - 3} more"
            raise CrossMarketError(f"--{key} is a setting of {holders}, not of {', '.join(models)}, so it would be "
                                   "ignored; drop it or run a model that has it")


def typed_overrides(overrides):
    """Command-line strings -> values, by RecBole's own conversion (``"1e-2"`` -> 0.01, ``"[16, 32]"`` -> list)."""
    return Config._convert_config_dict(None, dict(overrides))  # it uses no instance state


def make_config(model, market=None, config_file_list=None, config_dict=None):
    """The run's Config: plugin yaml < files < dict (< RecBole's own command-line overrides)."""
    config_dict = dict(config_dict or {})
    files = {path: read_config_file(path) for path in config_file_list or []}
    for path, content in files.items():
        check_config_file_keys(path, content)
        if "model" in content and str(content["model"]) != str(model):
            raise CrossMarketError(f"config file {path} sets model: {content['model']}, but the run's model is "
                                   f"{model}; drop one of them")
    if "dataset" not in config_dict:  # a config file's dataset, else the shipped one
        config_dict["dataset"] = next((c["dataset"] for c in reversed(list(files.values())) if "dataset" in c),
                                      "xmarket")
    if market is not None:
        config_dict["target_market"] = str(market).lower()
    check_trainer(model)
    try:
        config = CrossMarketConfig(model=model, dataset=config_dict["dataset"],
                                   config_file_list=config_file_list, config_dict=config_dict)
    except (ValueError, TypeError) as err:
        if not _raised_by_recbole_config(err):
            raise
        raise CrossMarketError(f"impossible settings: {err}") from None
    check_training_parameters(config)
    check_model_fits(config)
    return config


def _raised_by_recbole_config(err):
    """Whether RecBole's Config itself refused a value (its checks raise ValueError/TypeError with a message)."""
    frame = err.__traceback__
    while frame.tb_next is not None:
        frame = frame.tb_next
    return os.path.join("recbole", "config") in frame.tb_frame.f_code.co_filename


def check_trainer(model):
    """Refuse models whose RecBole trainer runs its own pre-training stages (before RecBole's config checks)."""
    from recbole.trainer import PretrainTrainer
    from recbole.utils import get_trainer as recbole_trainer

    if issubclass(recbole_trainer(get_model(model).type, model), PretrainTrainer):
        raise CrossMarketError(f"{model} trains in RecBole's own stages (train_stage, with its pretrain_epochs and "
                               "save_step), which the cross-market runner does not drive; run those stages with "
                               "RecBole's run_recbole, or choose another model")


def _is_int(value, low):
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _is_interval(value):
    """RecBole's filter intervals: ``None`` or ``"[a,b)"`` parts joined by ``;`` (RecBole skips a malformed
    part with a warning, so a typo would silently keep every user)."""
    if value is None:
        return True
    if not isinstance(value, str) or not value.strip():
        return False
    for part in value.split(";"):
        part = part.strip()
        bounds = part[1:-1].split(",")
        if len(part) < 2 or part[0] not in "[(" or part[-1] not in ")]" or len(bounds) != 2:
            return False
        try:
            low, high = float(bounds[0]), float(bounds[1])
        except ValueError:
            return False
        if np.isnan(low) or np.isnan(high) or low > high:
            return False
    return True


#: the ranking metrics a run can report, as RecBole spells them (Recall, NDCG, ...)
RANKING_METRIC_NAMES = [c.__name__.removeprefix("Expected") for c in FAIR_METRICS.values()]

#: key -> (accepts the value, what it must be); keys a model does not have are skipped.
SETTING_RULES = {
    "learning_rate": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "weight_decay": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "epochs": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "train_batch_size": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "eval_batch_size": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "eval_step": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "stopping_step": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "eval_neg_num": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "seed": (lambda v: _is_int(v, 0) and v < 2 ** 32, "an integer from 0 to 2**32 - 1"),
    "split_seed": (lambda v: _is_int(v, 0), "an integer >= 0"),
    "pretrain_max_epochs": (lambda v: v is None or _is_int(v, 1), "an integer >= 1, or ~ for the epochs cap"),
    "dropout_prob": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "embedding_size": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "topk": (lambda v: isinstance(v, list) and bool(v) and all(_is_int(k, 1) for k in v) and len(set(v)) == len(v),
             "a non-empty list of distinct integers >= 1"),
    "metrics": (lambda v: isinstance(v, list) and bool(v) and all(str(m).lower() in FAIR_METRICS for m in v)
                and len({str(m).lower() for m in v}) == len(v),
                f"a list of distinct ranking metrics from {', '.join(RANKING_METRIC_NAMES)}"),
    "train_neg_sample_args": (lambda v: v is None or (isinstance(v, dict) and (
        v.get("distribution") == "none" or _is_int(v.get("sample_num", 1), 1))),  # "none": RecBole's form of ~
        "~ or a mapping whose sample_num is an integer >= 1"),
    "untrained_items": (lambda v: v in UNTRAINED_ITEM_RULES, f"one of {', '.join(UNTRAINED_ITEM_RULES)}"),
    "torch_threads": (lambda v: v == "auto" or _is_int(v, 1), "auto or an integer >= 1"),
    "cmr_plots": (lambda v: isinstance(v, bool), "True or False"),
    "user_inter_num_interval": (lambda v: _is_interval(v), "~ or intervals such as \"[3,inf)\" (several: \";\")"),
    "item_inter_num_interval": (lambda v: _is_interval(v), "~ or intervals such as \"[3,inf)\" (several: \";\")"),
    "state": (lambda v: v is None or str(v).lower() in ("debug", "info", "warning", "error", "critical"),
              "one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    "finetune": (lambda v: v is None or isinstance(v, bool), "True, False or ~"),
    **{key: (lambda v: isinstance(v, bool), "True or False")
       for key in ("reproducibility", "use_gpu", "valid_metric_bigger", "pretrain_valid", "use_market_embedding",
                   "history_keeps_positive")},
    "show_progress": (lambda v: isinstance(v, bool) or v == "auto", "True, False or auto"),
    "field_separator": (lambda v: v == "\t", "a tab, as in every atomic file (convert writes them)"),
    "bucket_window": (lambda v: v is None or _is_int(v, 1), "an integer >= 1, or ~ for plain shuffled batches"),
    "gpu_id": (lambda v: re.fullmatch(r"\d+(,\d+)*", str(v)) is not None, "a device number or a comma list of them"),
    **{key: (lambda v: isinstance(v, str) and bool(v.strip()), "a field name of the atomic files")
       for key in ("USER_ID_FIELD", "ITEM_ID_FIELD", "MARKET_FIELD")},
    **{key: (lambda v: v is None or (isinstance(v, str) and bool(v.strip())), "a field name of the atomic files, or ~")
       for key in ("RATING_FIELD", "TIME_FIELD")},
    # hyper-parameters of RecBole's models, which RecBole never checks
    "mf_embedding_size": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "mlp_embedding_size": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "mlp_hidden_size": (lambda v: isinstance(v, list) and bool(v) and all(_is_int(k, 1) for k in v),
                        "a non-empty list of integers >= 1"),
    "hidden_size": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "inner_size": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "hidden_dropout_prob": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "attn_dropout_prob": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "MAX_ITEM_LIST_LENGTH": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "reg_weight": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
}

#: RecBole built-in model -> rules that hold for that model only (they replace a general rule of the same key).
BUILTIN_MODEL_RULES = {
    "EASE": {"reg_weight": (lambda v: _is_number(v) and v > 0, "a number > 0 (EASE inverts the Gram matrix plus it)")},
    "ItemKNN": {"k": (lambda v: _is_int(v, 1), "an integer >= 1 (neighbours per item)"),
                "shrink": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
                "knn_method": (lambda v: v in ("item", "user"), "item or user")},
    "LightGCN": {"n_layers": (lambda v: _is_int(v, 0), "an integer >= 0")},
    **{name: {"n_layers": (lambda v: _is_int(v, 1), "an integer >= 1"),
              "n_heads": (lambda v: _is_int(v, 1), "an integer >= 1"),
              "loss_type": (lambda v: v in ("CE", "BPR"), "CE or BPR")} for name in ("SASRec", "BERT4Rec")},
}


def check_settings(settings):
    """Reject settings no run can use, before any data is read; ``settings`` is a final config dict."""
    model = settings.get("model")
    rules = {**SETTING_RULES, **BUILTIN_MODEL_RULES.get(model, {})}
    problems = [f"{key} must be {what}, got {settings[key]!r}" for key, (accepts, what) in rules.items()
                if key in settings and not accepts(settings[key])]
    if model in ("SASRec", "BERT4Rec") and not problems and settings["hidden_size"] % settings["n_heads"]:
        problems.append(f"n_heads ({settings['n_heads']}) must divide hidden_size ({settings['hidden_size']})")
    if not problems:
        valid_metric = str(settings.get("valid_metric")).lower()
        name, _, k = valid_metric.partition("@")
        metrics = [str(m).lower() for m in settings["metrics"]]
        if name not in metrics or not k.isdigit() or int(k) not in settings["topk"]:
            problems.append(f"valid_metric must be one of the configured metrics at one of topk "
                            f"(e.g. NDCG@{settings['topk'][0]}), got {settings.get('valid_metric')!r}")
    if settings.get("use_gpu") is True and not torch.cuda.is_available():
        problems.append("use_gpu is True but torch sees no CUDA device, so the run would use the CPU; drop use_gpu "
                        "(or run where a GPU is)")
    check_model_settings = getattr(settings.get("model_class"), "check_settings", None)
    if not problems and check_model_settings:
        problems += check_model_settings(settings)
    if problems:
        raise CrossMarketError("impossible settings: " + "; ".join(problems))


def check_training_parameters(config):
    """:func:`check_settings` on a Config."""
    check_settings({**config.final_config_dict, "model_class": config.model_class})


def check_model_fits(config):
    """Reject a model the cross-market split or the chosen scope cannot serve, saying why."""
    model, scope = config["model"], str(config["train_markets"]).lower()
    if config["MODEL_TYPE"] == ModelType.KNOWLEDGE:
        raise CrossMarketError(f"{model} is a knowledge-aware model: it needs knowledge-graph files (.kg, .link) "
                               "that the cross-market data does not have; choose a general, sequential or context "
                               "model")
    if config["MODEL_TYPE"] == ModelType.DECISIONTREE:
        raise CrossMarketError(f"{model} is a decision-tree model (xgboost/lightgbm, trained outside torch); "
                               "the cross-market runner serves RecBole's torch models only")
    required = getattr(config.model_class, "train_markets", None)
    if required and scope not in required:
        raise CrossMarketError(
            f"{model} is a cross-market model that trains with train_markets: {' or '.join(required)} "
            f"(see its yaml); it cannot run with train_markets: {scope}"
        )


def protocol_config(config, protocol):
    """A copy of ``config`` that evaluates under another protocol (same split and seed)."""
    other = copy.copy(config)
    other.final_config_dict = copy.deepcopy(config.final_config_dict)
    mode = get_protocol(protocol).eval_mode(config["eval_neg_num"])
    other.final_config_dict["eval_protocol"] = protocol
    other.final_config_dict["eval_args"]["mode"] = {"valid": mode, "test": mode}
    other._set_eval_neg_sample_args("valid")
    other._set_eval_neg_sample_args("test")
    return other
