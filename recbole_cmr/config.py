"""RecBole Config that knows the plugin's models, yaml defaults and evaluation protocols."""

import os

import recbole
import yaml
from recbole.config import Config

from recbole_cmr.data.protocol import get_protocol
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


def known_config_keys(config_file_list=None):
    """Every key a yaml defines (RecBole's, the plugin's, the given files'): a command-line key outside it is a typo."""
    roots = (os.path.join(os.path.dirname(recbole.__file__), "properties"), PLUGIN_PROPERTIES)
    paths = [os.path.join(folder, name) for root in roots for folder, _, names in os.walk(root)
             for name in names if name.endswith(".yaml")]
    keys = set()
    for path in paths:
        with open(path, encoding="utf-8") as f:
            keys.update(yaml.load(f, Loader=yaml.FullLoader) or {})
    for path in config_file_list or []:
        keys.update(read_config_file(path))
    return keys


def typed_overrides(overrides):
    """Command-line strings -> values, by RecBole's own conversion (``"1e-2"`` -> 0.01, ``"[16, 32]"`` -> list)."""
    return Config._convert_config_dict(None, dict(overrides))  # it uses no instance state
