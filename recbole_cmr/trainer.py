"""RecBole trainers with weights-only checkpoints, fair evaluation, resumable training and TensorBoard files in the
run directory.

RecBole 1.2.1 pickles its ``Config`` into every checkpoint, which torch >= 2.6
refuses to load by default (``UnpicklingError``), and which would run arbitrary
code if it were allowed. Our trainers override one hook, ``_save_checkpoint``,
to save tensors and plain metadata only; RecBole's own ``evaluate`` and
``resume_checkpoint`` then load them unchanged. Their collector and evaluator
are the fair-tie ones of :mod:`recbole_cmr.evaluator`.
"""

import contextlib
import os
import pickle
import random
import time

import numpy as np
import recbole.trainer.trainer as recbole_trainer_module
import torch
from recbole.utils import EvaluatorType, ModelType
from recbole.utils import get_trainer as get_recbole_trainer
from torch.utils.tensorboard import SummaryWriter

from recbole_cmr.evaluator import FairEvaluator, FairRankingCollector
from recbole_cmr.utils import CrossMarketError, write_torch

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
        write_torch(saved_model_file, state)
        if verbose:
            self.logger.info(f"Saving current: {saved_model_file}")


class ResumableTrainingMixin:
    """Writes the whole training state to ``resume_file`` before every epoch after the first, and reads it back.

    The state is what the next epoch depends on: weights, optimizer, early-stopping counters, the learning
    curve so far, and every generator (the global ones and the training loader's), so a run killed in its
    tenth epoch of a phase continues at the tenth with the numbers of a run never killed.
    ``elapsed_seconds`` (a callable, the run's computing time so far) is stored beside it.
    """

    resume_file = None
    elapsed_seconds = None

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        if self.resume_file and epoch_idx > self.start_epoch:
            self._save_training_state(train_data, epoch_idx)
        return super()._train_epoch(train_data, epoch_idx, *args, **kwargs)

    def _save_training_state(self, train_data, epoch_idx):
        other = self.model.other_parameter()
        if other and _plain_other_parameter(self.model) is None:  # state kept outside tensors: not resumable
            return
        state = {
            "config": checkpoint_metadata(self.config),
            "next_epoch": epoch_idx,
            "cur_step": self.cur_step,
            "best_valid_score": float(self.best_valid_score),
            "best_valid_result": {k: float(v) for k, v in (self.best_valid_result or {}).items()},
            "train_loss": {int(epoch): float(sum(loss) if isinstance(loss, tuple) else loss)
                           for epoch, loss in self.train_loss_dict.items()},
            "epoch_history": getattr(self, "epoch_history", []),
            "state_dict": self.model.state_dict(),
            "other_parameter": other or None,
            "optimizer": self.optimizer.state_dict(),
            "rng": global_rng_state(),
            "loader_rng": train_data.generator.get_state(),
            "elapsed_seconds": float(self.elapsed_seconds()) if self.elapsed_seconds else 0.0,
        }
        write_torch(self.resume_file, state)

    def resume_training(self, train_data):
        """Continue from ``resume_file``; returns the run's computing seconds recorded with it."""
        try:
            state = torch.load(self.resume_file, map_location="cpu", weights_only=True)
            self.model.load_state_dict(state["state_dict"])
            self.model.load_other_parameter(state["other_parameter"])
            self.optimizer.load_state_dict(state["optimizer"])
        except Exception as err:  # truncated, foreign, or of another architecture
            raise CrossMarketError(f"the training state {self.resume_file} cannot be resumed "
                                   f"({type(err).__name__}); delete the unfinished run folder and run again") from None
        self.start_epoch = int(state["next_epoch"])
        self.cur_step = int(state["cur_step"])
        self.best_valid_score = state["best_valid_score"]
        self.best_valid_result = state["best_valid_result"] or None
        self.train_loss_dict = dict(state["train_loss"])
        if hasattr(self, "epoch_history"):
            self.epoch_history = list(state["epoch_history"])
        restore_global_rng_state(state["rng"])
        train_data.generator.set_state(state["loader_rng"])
        self.logger.info(f"resuming at epoch {self.start_epoch} from {self.resume_file}")
        return float(state["elapsed_seconds"])


class _NoTensorBoard:
    """The writer of a trainer whose logger has no log file (an API or bench caller): it writes nothing."""

    def add_scalar(self, *args, **kwargs):
        pass

    def add_hparams(self, *args, **kwargs):
        pass

    def close(self):
        pass


@contextlib.contextmanager
def _tensorboard_beside_log_file():
    """RecBole's trainers open ``./log_tensorboard/<log name>`` in the current directory; while this
    context is open they write to ``tensorboard/`` beside the run's log file instead, and nowhere when the
    logger has no file (never into the caller's current directory)."""
    recbole_writer = recbole_trainer_module.get_tensorboard

    def writer(logger):
        for handler in logger.handlers:
            if hasattr(handler, "baseFilename"):
                return SummaryWriter(os.path.join(os.path.dirname(handler.baseFilename), "tensorboard"))
        return _NoTensorBoard()

    recbole_trainer_module.get_tensorboard = writer
    try:
        yield
    finally:
        recbole_trainer_module.get_tensorboard = recbole_writer


class FairEvaluationMixin:
    """RecBole's trainer with the fair-tie collector and evaluator (per-user values kept)."""

    def __init__(self, config, model):
        with _tensorboard_beside_log_file():
            super().__init__(config, model)
        self.eval_collector = FairRankingCollector(config)
        self.evaluator = FairEvaluator(config)


class EpochHistoryMixin:
    """Records each training epoch's loss and the valid metrics computed after it (learning curves)."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.epoch_history = []

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        started = time.perf_counter()
        loss = super()._train_epoch(train_data, epoch_idx, *args, **kwargs)
        total = sum(float(part) for part in loss) if isinstance(loss, tuple) else float(loss)
        self.epoch_history.append({"epoch": epoch_idx, "train_loss": total,
                                   "train_seconds": round(time.perf_counter() - started, 4)})
        return loss

    def _valid_epoch(self, valid_data, *args, **kwargs):
        score, result = super()._valid_epoch(valid_data, *args, **kwargs)
        if self.epoch_history:
            self.epoch_history[-1].update({k: float(v) for k, v in result.items()})
        return score, result


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
    """RecBole's trainer class for the model, with weights-only checkpoints, fair evaluation, resumable epochs (and
    one-pass candidate scoring for sequential models)."""
    base = get_recbole_trainer(config["MODEL_TYPE"], config["model"])
    mixins = (WeightsOnlyCheckpointMixin, FairEvaluationMixin, ResumableTrainingMixin, EpochHistoryMixin)
    if config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
        mixins += (SequentialCandidateScoringMixin,)
    return type(f"CrossMarket{base.__name__}", (*mixins, base), {})


def load_checkpoint(path, config):
    """Load a checkpoint saved by our trainers for the same model and split, or say why not."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CrossMarketError(f"checkpoint {path} does not exist; pass the pretrain.pth of an earlier run") from None
    except IsADirectoryError:
        raise CrossMarketError(f"checkpoint {path} is a folder; pass the pretrain.pth file inside a run "
                               "folder") from None
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):
            raise CrossMarketError(f"checkpoint {path} cannot be read (it is truncated or not a torch file); it must "
                                   "be a pretrain.pth/finetune.pth written by recbole-cmr") from None
        # torch's own message suggests weights_only=False: never for a file that failed the safe load
        raise CrossMarketError(
            f"checkpoint {path} holds pickled Python objects, which are never loaded (they can run code); "
            "pass a pretrain.pth/finetune.pth written by recbole-cmr"
        ) from None
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CrossMarketError(
            f"checkpoint {path} cannot be read ({type(err).__name__}); "
            "it must be a pretrain.pth/finetune.pth written by recbole-cmr"
        ) from None
    if not _has_checkpoint_layout(checkpoint):
        raise CrossMarketError(f"checkpoint {path} was not written by recbole-cmr (it lacks a state_dict of "
                               "tensors or the config of its split); pass a pretrain.pth of an earlier run")
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


def _has_checkpoint_layout(checkpoint):
    """The structure our trainers write: a dict with a tensor ``state_dict`` and a ``config`` dict."""
    return (isinstance(checkpoint, dict) and isinstance(checkpoint.get("config"), dict)
            and isinstance(checkpoint.get("state_dict"), dict)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in checkpoint["state_dict"].items())
            and isinstance(checkpoint.get("trained_items", torch.empty(0)), torch.Tensor))


def load_state_dict(model, checkpoint, path):
    """Load a checkpoint's weights into ``model``, or say in one line how they do not fit."""
    state = checkpoint["state_dict"]
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    resized = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or resized:
        parts = [f"{len(keys)} {what} (first: {keys[0]}{shape})" for keys, what, shape in (
            (missing, "missing weight(s)", ""), (unexpected, "unexpected weight(s)", ""),
            (resized, "weight(s) of another shape",
             f" {tuple(state[resized[0]].shape)} vs {tuple(expected[resized[0]].shape)}" if resized else ""))
            if keys]
        raise CrossMarketError(f"checkpoint {path} does not fit this model ({'; '.join(parts)}); it was trained "
                               "with other hyper-parameters: use the same config as its run")
    model.load_state_dict(state)


def global_rng_state():
    """The global generators' state (torch, numpy, Python) in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
            "python": [version, list(internal), gauss_next]}


def restore_global_rng_state(state):
    """Undo :func:`global_rng_state`."""
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def record_finetune_rng_state(path, trained_items):
    """Store in a pre-training checkpoint the global generators' state at which this run's fine-tuning starts,
    and the items its pre-training trained on (see ``untrained_items``).

    Fine-tuning draws negatives (numpy) and dropout masks (torch) from the global generators, whose
    state after pre-training depends on everything pre-training did; restoring it makes a fine-tune
    from the file (``--pretrained``, a compare grid's cache) give the numbers of the two-phase run.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    checkpoint["finetune_rng_state"] = global_rng_state()
    checkpoint["trained_items"] = trained_items.clone()
    write_torch(path, checkpoint)


def restore_finetune_rng_state(checkpoint):
    """Undo :func:`record_finetune_rng_state`, so a fine-tune from a saved pre-training draws what the two-phase run
    drew."""
    restore_global_rng_state(checkpoint["finetune_rng_state"])
