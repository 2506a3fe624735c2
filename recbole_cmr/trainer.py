"""RecBole trainers whose checkpoints load with ``torch.load(weights_only=True)``.

RecBole 1.2.1 pickles its ``Config`` into every checkpoint, which torch >= 2.6
refuses to load by default (``UnpicklingError``), and which would run arbitrary
code if it were allowed. Our trainers override one hook, ``_save_checkpoint``,
to save tensors and plain metadata only; RecBole's own ``evaluate`` and
``resume_checkpoint`` then load them unchanged.
"""

import os
import random

import numpy as np
import torch
from recbole.utils import EvaluatorType, ModelType
from recbole.utils import get_trainer as get_recbole_trainer

from recbole_cmr.utils import CrossMarketError

#: Config keys stored in a checkpoint; a checkpoint is reusable only where the split is the same.
SPLIT_KEYS = ("model", "dataset", "target_market", "source_markets", "split_order", "split_seed", "seed")


def checkpoint_metadata(config):
    """The plain config values that identify the model and the split a checkpoint belongs to."""
    return {key: config[key] for key in SPLIT_KEYS}


def _plain_other_parameter(model):
    """``other_parameter`` if it is tensors only; otherwise None (the model keeps it in memory)."""
    other = model.other_parameter()
    if other and all(value is None or isinstance(value, torch.Tensor) for value in other.values()):
        return other
    return None


class WeightsOnlyCheckpointMixin:
    """Overrides RecBole's ``_save_checkpoint``: weights and plain metadata, written atomically."""

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        state = {
            "config": checkpoint_metadata(self.config),
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": float(self.best_valid_score),
            "state_dict": self.model.state_dict(),
            "other_parameter": _plain_other_parameter(self.model),
            "optimizer": self.optimizer.state_dict(),
        }
        tmp = saved_model_file + ".tmp"
        torch.save(state, tmp)
        os.replace(tmp, saved_model_file)
        if verbose:
            self.logger.info(f"Saving current: {saved_model_file}")


class SequentialCandidateScoringMixin:
    """Overrides RecBole's ``_neg_sample_batch_eval`` for sequential models under sampled protocols.

    RecBole's ``predict`` re-encodes a user's sequence once per candidate row (100 times per
    user under ``paper``/``market``); one ``full_sort_predict`` per user gives the same scores.
    """

    def _neg_sample_batch_eval(self, batched_data):
        interaction, row_idx, positive_u, positive_i = batched_data
        if self.config["eval_type"] != EvaluatorType.RANKING:
            return super()._neg_sample_batch_eval(batched_data)
        n_users = int(positive_u[-1]) + 1
        rows = torch.arange(len(row_idx))
        first_row = torch.full((n_users,), len(row_idx)).scatter_reduce(0, row_idx, rows, "amin")
        full = self.model.full_sort_predict(interaction[first_row].to(self.device)).view(n_users, -1)
        col_idx = interaction[self.config["ITEM_ID_FIELD"]]
        scores = torch.full((n_users, self.tot_item_num), -np.inf, device=self.device)
        scores[row_idx, col_idx] = full[row_idx, col_idx]
        return interaction, scores, positive_u, positive_i


def get_trainer(config):
    """RecBole's trainer class for the model, with weights-only checkpoints (and one-pass candidate
    scoring for sequential models)."""
    base = get_recbole_trainer(config["MODEL_TYPE"], config["model"])
    mixins = (WeightsOnlyCheckpointMixin,)
    if config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
        mixins += (SequentialCandidateScoringMixin,)
    return type(f"CrossMarket{base.__name__}", (*mixins, base), {})


def load_checkpoint(path, config):
    """Load a checkpoint saved by our trainers for the same model and split, or say why not."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CrossMarketError(f"checkpoint {path} does not exist; pass the pretrain.pth of an earlier run") from None
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CrossMarketError(
            f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); "
            "it must be a pretrain.pth/finetune.pth written by recbole-cmr"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "config" not in checkpoint:
        raise CrossMarketError(f"checkpoint {path} was not written by recbole-cmr (no state_dict/config)")
    expected = checkpoint_metadata(config)
    mismatched = {k: (checkpoint["config"].get(k), v) for k, v in expected.items()
                  if k != "seed" and checkpoint["config"].get(k) != v}
    if mismatched:
        details = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in mismatched.items())
        raise CrossMarketError(
            f"checkpoint {path} belongs to another model or split ({details}); a pre-trained model may only be "
            "fine-tuned on the split it was trained on, otherwise test items leak into training"
        )
    return checkpoint


def record_finetune_rng_state(path):
    """Store in a pre-training checkpoint the global generators' state at which this run's fine-tuning starts.

    Fine-tuning draws negatives (numpy) and dropout masks (torch) from the global generators, whose
    state after pre-training depends on everything pre-training did; restoring it makes a fine-tune
    from the file (``--pretrained``, a compare grid's cache) give the numbers of the two-phase run.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    checkpoint["finetune_rng_state"] = {  # types torch.load(weights_only=True) accepts
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
        "python": [version, list(internal), gauss_next],
    }
    torch.save(checkpoint, path + ".tmp")
    os.replace(path + ".tmp", path)


def restore_finetune_rng_state(checkpoint):
    """Undo :func:`record_finetune_rng_state`; checkpoints written before it existed leave the state as it is."""
    state = checkpoint.get("finetune_rng_state")
    if state is None:
        return
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
