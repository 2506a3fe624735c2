"""Run any model on the cross-market split: one phase for RecBole built-ins, pre-train -> fine-tune for ACMR.

Every run writes one directory (``<checkpoint_dir>/<model>-<market>-<protocol>-seed<seed>-<time>``)
holding ``run.log``, the checkpoints, ``config.json`` and the results as
``results.json`` and ``results.csv``. The directory is built under a
``.incomplete`` name and renamed only when the run has finished, and it is
removed if the run fails. A run that is killed or interrupted after its first
epoch keeps that folder with its training state (``resume.json``, the phase's
``<phase>.resume.pth``, a finished phase's ``<phase>.done.json``); the same
run with ``resume=`` that folder continues where it stopped and gives the
numbers of a run never interrupted.
"""

import csv
import glob
import json
import logging
import os
import shutil
import sys
import time
from logging.handlers import MemoryHandler

import numpy as np
import torch
from recbole.utils import init_seed
from recbole.utils.logger import RemoveColorFilter

from recbole_cmr.config import make_config, protocol_config
from recbole_cmr.data.dataset import atomic_files_digest, create_dataset
from recbole_cmr.data.protocol import eval_dataloaders, get_protocol, train_dataloader
from recbole_cmr.model.abstract_recommender import CrossMarketModel
from recbole_cmr.plots import learning_curves
from recbole_cmr.trainer import (
    get_trainer,
    load_checkpoint,
    load_state_dict,
    record_finetune_rng_state,
    restore_finetune_rng_state,
)
from recbole_cmr.utils import (
    CrossMarketError,
    choose_threads,
    is_locked,
    release,
    try_lock,
    write_atomically,
    write_csv_rows,
    write_text,
)

PHASES = ("both", "pretrain", "finetune")
#: Config keys that change what a run prints, not what it computes: a resumed run may differ in them.
DISPLAY_KEYS = ("state", "show_progress")
#: Where a run's files are, not what it computes (the atomic files' digest stands for the data): a run folder
#: committed from one clone resumes in another clone at another path.
LOCATION_KEYS = ("checkpoint_dir", "data_path")
#: Files that exist only to resume an unfinished run; removed when it finishes.
RESUME_FILES = ("resume.json", "*.resume.pth", "*.done.json")
REPORTED_METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10", "mrr@10")
PLAIN_TYPES = (str, int, float, bool, list, dict, type(None))


def progress_bars(setting):
    """``show_progress``: True, False, or auto (bars only where someone watches a terminal)."""
    return sys.stderr.isatty() if setting == "auto" else bool(setting)


def training_items(dataset):
    """Items in the rows a model trains on (and in their item lists, for sequential models), as a mask."""
    feat = dataset.inter_feat
    items = [feat[dataset.iid_field].reshape(-1)]
    list_field = getattr(dataset, "item_id_list_field", None)
    if list_field and list_field in feat:
        items.append(feat[list_field].reshape(-1))
    mask = torch.zeros(dataset.item_num, dtype=torch.bool)
    mask[torch.cat(items)] = True
    mask[0] = False  # padding
    return mask


def _flat(result):
    return {k: round(float(v), 6) for k, v in (result or {}).items()}


class RunDirectory:
    """A run's output folder, visible under its final name only once complete; ``resume`` reopens an unfinished
    one."""

    def __init__(self, config, resume=None):
        if resume is not None:
            self.work = os.path.normpath(resume)
            self.path = self.work[:-len(".incomplete")]
            self.lock = try_lock(self.work)
            if self.lock is None:
                raise CrossMarketError(f"{self.work} is being run by another process now; wait for it to finish or "
                                       "stop it, then resume")
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"{config['model']}-{config['target_market']}-{config['eval_protocol']}-seed{config['seed']}-{stamp}"
        self.path = os.path.join(config["checkpoint_dir"], name)
        self.work = self.path + ".incomplete"
        n = 1
        while any(os.path.exists(p) for p in (self.path, self.work, self._hidden())):
            n += 1
            self.path = os.path.join(config["checkpoint_dir"], f"{name}-{n}")
            self.work = self.path + ".incomplete"
        # made under a hidden name and locked before it is visible: a grid beside it never sees it unlocked, and
        # leaves it alone while this process holds the lock
        os.makedirs(self._hidden())
        self.lock = try_lock(self._hidden(), wait=True)
        os.rename(self._hidden(), self.work)

    def _hidden(self):
        return os.path.join(os.path.dirname(self.work), "." + os.path.basename(self.work))

    def file(self, name):
        return os.path.join(self.work, name)

    def resumable(self):
        return holds_training_state(self.work)

    def commit(self):
        for pattern in RESUME_FILES:
            for path in glob.glob(self.file(pattern)):
                os.remove(path)
        os.replace(self.work, self.path)
        self.close()

    def discard(self):
        shutil.rmtree(self.work, ignore_errors=True)
        self.close()

    def close(self):
        release(self.lock)
        self.lock = None


def holds_training_state(folder):
    """Whether a run folder holds a training state to continue from (an epoch or a phase finished)."""
    return any(glob.glob(os.path.join(folder, pattern)) for pattern in RESUME_FILES[1:])


def plain_config(config):
    """The config's values that JSON can hold (RecBole's also holds enums and devices, derived from these)."""
    return {k: v for k, v in config.final_config_dict.items() if isinstance(v, PLAIN_TYPES)}


def resume_request(config, phase, pretrained, test_protocols):
    """What a run computes: its config (plain values; display keys and file locations left out), the digest of
    its atomic files and the run's own arguments."""
    plain = {k: v for k, v in plain_config(config).items() if k not in DISPLAY_KEYS + LOCATION_KEYS}
    request = {"config": plain, "data": atomic_files_digest(config), "phase": phase, "pretrained": pretrained,
               "test_protocols": test_protocols}
    return json.loads(json.dumps(request, sort_keys=True, default=str))


def _comparable(recorded, request):
    """A recorded request in the current request's terms: folders written before file locations were left out
    drop them, and those without the data's digest are compared without it."""
    recorded = {**recorded, "config": {k: v for k, v in recorded["config"].items() if k not in LOCATION_KEYS}}
    if "data" not in recorded:
        recorded["data"] = request["data"]
    return recorded


def _recorded_request(folder):
    try:
        with open(os.path.join(folder, "resume.json"), encoding="utf-8") as f:
            recorded = json.load(f)
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) and isinstance(recorded.get("config"), dict) else None


def check_resumable(folder, request):
    """Refuse, in one line, a folder that is not an unfinished run of the same request."""
    if not (os.path.isdir(folder) and os.path.normpath(folder).endswith(".incomplete")):
        raise CrossMarketError(f"--resume takes an unfinished run folder (a name ending in .incomplete), got {folder}")
    recorded = _recorded_request(folder)
    if recorded is None or not holds_training_state(folder):
        raise CrossMarketError(f"{folder} holds no training state to resume (it stopped before its first epoch "
                               "ended); delete it and run again")
    recorded = _comparable(recorded, request)
    if recorded != request:
        changed = sorted(k for k in set(recorded["config"]) | set(request["config"])
                         if recorded["config"].get(k) != request["config"].get(k))
        changed += [k for k in ("data", "phase", "pretrained", "test_protocols") if recorded.get(k) != request.get(k)]
        raise CrossMarketError(f"{folder} was started with other settings ({', '.join(changed[:5])} "
                               f"{'differs' if len(changed) == 1 else 'differ'}); resume it with the command that "
                               "started it, or delete it")


def find_resumable_run(config, phase="both", pretrained=None, test_protocols=None):
    """The newest unfinished run folder in ``checkpoint_dir`` of the same request with a state to continue from,
    not one another process is running in."""
    request = resume_request(config, phase, pretrained, _test_protocols(config, test_protocols))
    pattern = f"{config['model']}-{config['target_market']}-{config['eval_protocol']}-seed{config['seed']}-*.incomplete"
    for folder in sorted(glob.glob(os.path.join(config["checkpoint_dir"], pattern)), reverse=True):
        recorded = _recorded_request(folder)
        if (recorded is not None and _comparable(recorded, request) == request and holds_training_state(folder)
                and not is_locked(folder)):
            return folder
    return None


class RunLogFileHandler(logging.FileHandler):
    """The run's log file, each line written through by its descriptor. A line it cannot write (a full disk) stops
    the run with that OSError, which the command reports as its one error line, where logging would print a
    traceback per line, go on with a log that has gaps, and fail again when the handler is closed."""

    def __init__(self, path):
        super().__init__(path, delay=True)  # logging's own stream stays unopened
        self.fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def emit(self, record):
        try:
            line = (self.format(record) + self.terminator).encode("utf-8")
        except Exception:  # a record that does not format is logging's business, as in any handler
            self.handleError(record)
            return
        try:
            while line:
                line = line[os.write(self.fd, line):]
        except OSError as err:
            raise OSError(err.errno, err.strerror, self.baseFilename) from None

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        super().close()


def _init_logging(log_file, config):
    """RecBole-style logging to the console and the run's log file."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    console_level = getattr(logging, str(config["state"] or "INFO").upper(), logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s  %(message)s", "%d %b %H:%M:%S")
    # ``state`` quiets the console only: the log file keeps every epoch line (quiet grids too).
    file_handler = RunLogFileHandler(log_file)
    file_handler.addFilter(RemoveColorFilter())  # after the console handler, as in RecBole's own logger
    console = logging.StreamHandler()
    console.addFilter(lambda record: not getattr(record, "log_file_only", False))
    for handler, level in ((console, console_level), (file_handler, logging.INFO)):
        handler.setFormatter(fmt)
        handler.setLevel(level)
    # the console's lines wait until training starts (release_console): data, settings or a training state the
    # run refuses print their one error line alone
    root.addHandler(MemoryHandler(capacity=10 ** 6, flushLevel=logging.CRITICAL + 1, target=console,
                                  flushOnClose=False))
    root.addHandler(file_handler)
    root.setLevel(min(console_level, logging.INFO))
    return root


def release_console():
    """Print the console lines held back while the data was read, and the next ones as they come."""
    root = logging.getLogger()
    for index, handler in enumerate(root.handlers):
        if isinstance(handler, MemoryHandler):
            handler.flush()
            root.handlers[index] = handler.target  # in place: before the log file's colour-removing filter


class CrossMarketRun:
    """One model on one split: data, model, phases and evaluation."""

    def __init__(self, config, run_dir, callback_fn=None):
        self.clock_origin = time.time()  # moved back on resume by the computing time the folder records
        self.config = config
        self.run_dir = run_dir
        self.callback_fn = callback_fn
        self.resumed = []  # where this run continued an interrupted one, e.g. "pretrain at epoch 12"
        self.logger = logging.getLogger()
        # float sums split over threads add in another order: a run's numbers depend on its thread count
        self.threads = choose_threads(config["torch_threads"])
        torch.set_num_threads(self.threads)
        self.logger.info(f"torch threads: {self.threads} (torch_threads: {config['torch_threads']})")
        init_seed(config["seed"], config["reproducibility"])
        self.dataset = create_dataset(config)
        self.built = self.dataset.build()
        self.logger.info(self._split_summary())
        self.valid_data, self.test_data = eval_dataloaders(config, self.dataset, self.built)
        init_seed(config["seed"], config["reproducibility"])
        model_class = config.model_class
        self.model = model_class(config, self.built[0]).to(config["device"])
        self.logger.info(self.model)
        self.per_user_test = {}  # protocol -> metric -> per-user test values of the last evaluated phase
        self.trained_items = torch.zeros(self.dataset.item_num, dtype=torch.bool)  # over every phase so far
        self.learning_curves = []  # one row per epoch of every phase: training loss and valid metrics
        self.data_passes = 0.0  # training in validated phases so far, in passes over every market's training rows

    def elapsed(self):
        """The run's computing seconds so far, an interrupted run's recorded time included."""
        return time.time() - self.clock_origin

    def _split_summary(self):
        train, valid, test = self.built
        return (f"split: target={self.config['target_market']} order={self.config['split_order']} "
                f"train_markets={self.config['train_markets']} train rows={len(train)} "
                f"valid users={len(valid)} test users={len(test)} protocol={self.config['eval_protocol']}")

    def _target_train_data(self):
        """Fine-tuning data: the target market's training rows only."""
        history = self.dataset.history_dataset
        rows = history.inter_feat[self.dataset.market_field] == self.dataset.target_market_id
        target = history.copy(history.inter_feat[rows])
        return train_dataloader(self.config, target, self.built)

    def _fit(self, phase, train_data):
        self.trained_items |= training_items(train_data.dataset)
        trainer = get_trainer(self.config)(self.config, self.model)
        if self.config["untrained_items"] == "last":
            trainer.eval_collector.trained_items = self.trained_items
        trainer.saved_model_file = self.run_dir.file(f"{phase}.pth")
        if phase == "pretrain" and self.config["pretrain_max_epochs"]:
            trainer.epochs = min(trainer.epochs, int(self.config["pretrain_max_epochs"]))
            trainer.eval_step = min(self.config["eval_step"], trainer.epochs)
        trainer.resume_file, trainer.elapsed_seconds = self.run_dir.file(f"{phase}.resume.pth"), self.elapsed
        if os.path.exists(trainer.resume_file):
            self.clock_origin = time.time() - trainer.resume_training(train_data)
            self.resumed.append(f"{phase} at epoch {trainer.start_epoch}")
        release_console()
        self.logger.info(f"== phase {phase}: {len(train_data.dataset)} training rows ==")
        share, before = len(train_data.dataset) / max(1, len(self.dataset.history_dataset)), self.data_passes
        callback = (lambda epoch, score: self.callback_fn(phase, epoch, score, before + (epoch + 1) * share)
                    ) if self.callback_fn else None
        # RecBole's fit without valid data keeps the last epoch's checkpoint
        valid_data = None if phase == "pretrain" and not self.config["pretrain_valid"] else self.valid_data
        try:
            trainer.fit(train_data, valid_data, saved=True, show_progress=progress_bars(self.config["show_progress"]),
                        callback_fn=callback)
        finally:  # its event file is complete (and no writer thread outlives an interrupted run's folder)
            trainer.tensorboard.close()
        self._record_curve(phase, trainer.epoch_history)
        if valid_data is not None:  # an unvalidated phase has a fixed length in every trial of a search
            self.data_passes = before + len(trainer.epoch_history) * share
        return trainer

    def _record_curve(self, phase, history):
        """Keep a phase's epochs, marking the one it selected (best valid score, or the last without valid)."""
        metric = self.config["valid_metric"].lower()
        scored = [row for row in history if metric in row]
        selected = max(scored, key=lambda row: row[metric]) if scored else (history[-1] if history else None)
        self.learning_curves += [{"phase": phase, **row, "selected": row is selected} for row in history]

    def _evaluate(self, trainer, test_protocols):
        """Valid and test metrics of the phase's best checkpoint, per requested protocol.

        With no test protocols (searches) only the configured protocol's valid metrics are computed.
        """
        if not test_protocols:
            return {self.config["eval_protocol"]: {"valid": _flat(trainer.evaluate(self.valid_data))}}
        results = {}
        for protocol in test_protocols:
            if protocol == self.config["eval_protocol"]:
                valid_data, test_data = self.valid_data, self.test_data
            else:
                valid_data, test_data = eval_dataloaders(protocol_config(self.config, protocol),
                                                         self.dataset, self.built)
            valid = _flat(trainer.evaluate(valid_data, load_best_model=True))
            test = _flat(trainer.evaluate(test_data, load_best_model=True))
            self.per_user_test[protocol] = trainer.evaluator.last_per_user
            results[protocol] = {"valid": valid, "test": test}
        return results

    def _load_pretrained(self, path):
        checkpoint = load_checkpoint(path, self.config)
        if ("trained_items" not in checkpoint or "finetune_rng_state" not in checkpoint
                or len(checkpoint["trained_items"]) != len(self.trained_items)):
            raise CrossMarketError(f"checkpoint {path} does not record which items its pre-training saw and the "
                                   "random state fine-tuning starts from (written by an older recbole-cmr, or for "
                                   "other data); pre-train again")
        load_state_dict(self.model, checkpoint, path)
        self.trained_items |= checkpoint["trained_items"]
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        if isinstance(self.model, CrossMarketModel):  # e.g. FOREC forks its target-market head here
            self.model.start_finetune()
        restore_finetune_rng_state(checkpoint)

    def _record_finished_phase(self, phase, results):
        """A finished, evaluated phase, so an interrupted run continues with the next one."""
        write_text(self.run_dir.file(f"{phase}.done.json"), json.dumps({
            "results": results, "learning_curves": self.learning_curves, "data_passes": self.data_passes,
            "elapsed_seconds": self.elapsed()}))

    def _finished_phase(self, phase):
        """The results of ``phase`` if an interrupted run finished it (see ``_record_finished_phase``), else None."""
        path = self.run_dir.file(f"{phase}.done.json")
        if not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as f:
            done = json.load(f)
        self.learning_curves, self.data_passes = done["learning_curves"], done["data_passes"]
        self.clock_origin = time.time() - done["elapsed_seconds"]
        self.resumed.append(f"after {phase}")
        self.logger.info(f"resuming after the finished phase {phase} ({path})")
        return done["results"]

    def run(self, phase="both", pretrained=None, test_protocols=None):
        """Train and evaluate; returns ``{phase: {protocol: {valid|test: metrics}}}``."""
        two_phase = bool(self.config["finetune"])
        results = {}
        if not two_phase:
            trainer = self._fit("train", train_dataloader(self.config, self.built[0], self.built))
            results["train"] = self._evaluate(trainer, test_protocols)
            return results
        if pretrained is None and phase in ("both", "pretrain"):
            results["pretrain"] = self._finished_phase("pretrain")
            if results["pretrain"] is None:
                trainer = self._fit("pretrain", train_dataloader(self.config, self.built[0], self.built))
                results["pretrain"] = self._evaluate(trainer, test_protocols)
                record_finetune_rng_state(trainer.saved_model_file, self.trained_items)
                if phase == "both":
                    self._record_finished_phase("pretrain", results["pretrain"])
            pretrained = self.run_dir.file("pretrain.pth")
        if phase in ("both", "finetune"):
            if pretrained is None:
                raise CrossMarketError("--phase=finetune needs --pretrained=PATH (a pretrain.pth of an earlier run)")
            self._load_pretrained(pretrained)
            trainer = self._fit("finetune", self._target_train_data())
            results["finetune"] = self._evaluate(trainer, test_protocols)
        return results


def run_seconds(run_path):
    """A finished run's computing time from its ``results.json``, an interrupted run's earlier sessions included."""
    with open(os.path.join(run_path, "results.json"), encoding="utf-8") as f:
        return json.load(f)["wall_seconds"]


def results_rows(config, results):
    """Flat rows (one per phase, protocol and split) for tables and CSV."""
    rows = []
    for phase, by_protocol in results.items():
        for protocol, by_split in by_protocol.items():
            for split, metrics in by_split.items():
                row = {"model": config["model"], "market": config["target_market"], "protocol": protocol,
                       "train_markets": config["train_markets"], "seed": config["seed"], "phase": phase,
                       "split": split}
                row.update({m: metrics.get(m) for m in REPORTED_METRICS})
                rows.append(row)
    return rows


def format_table(rows):
    """The closing table; its title names the protocol(s) and the seed."""
    protocols = sorted({r["protocol"] for r in rows})
    first = rows[0]
    title = (f"{first['model']} on target market {first['market'].upper()} | "
             f"protocol: {', '.join(protocols)} | seed {first['seed']} | train_markets={first['train_markets']}")
    header = ["phase", "protocol", "split"] + list(REPORTED_METRICS)
    lines = [title, " | ".join(f"{h:>10}" for h in header)]
    for r in rows:
        cells = [r["phase"], r["protocol"], r["split"]] + [
            "" if r[m] is None else f"{r[m]:.4f}" for m in REPORTED_METRICS]
        lines.append(" | ".join(f"{c:>10}" for c in cells))
    return "\n".join(lines)


def _test_protocols(config, test_protocols):
    """The protocols a run tests under: the configured one first; ``[]`` (searches) tests none."""
    if test_protocols != []:
        test_protocols = list(dict.fromkeys([config["eval_protocol"], *(test_protocols or [])]))
    return [get_protocol(protocol).name for protocol in test_protocols]


def run(model, market=None, config_file_list=None, config_dict=None, phase="both", pretrained=None,
        test_protocols=None, callback_fn=None, saved=True, resume=None):
    """Run ``model`` on target ``market``; returns ``(run_path, rows)``.

    ``test_protocols``: protocols to test the selected model under besides the configured one;
    an empty list computes no test metric at all (hyper-parameter searches).
    ``callback_fn(phase, epoch, valid_score, data_passes)`` is called after every validation; ``data_passes`` is
    the run's training so far in passes over every market's training rows (an epoch on the target market
    alone is a small fraction of one), in the phases it validates (FOREC's fixed pre-training is not counted),
    which is what a search's early stopping compares trials by.
    ``saved=False`` keeps the run directory out of the way (it is removed afterwards, and when the run is
    interrupted; a killed process leaves it to resume from, as a search's trial does).
    ``resume``: the ``.incomplete`` folder of an interrupted run with the same arguments, to continue it (see
    :func:`find_resumable_run`); an interrupted run keeps its folder when it holds a state to resume from, and
    the ``KeyboardInterrupt`` it raises names it as ``kept_run``.
    """
    if phase not in PHASES:
        raise CrossMarketError(f"unknown phase {phase!r}; choose one of {', '.join(PHASES)}")
    config = make_config(model, market, config_file_list, config_dict)
    test_protocols = _test_protocols(config, test_protocols)
    if not config["finetune"] and (phase != "both" or pretrained is not None):
        raise CrossMarketError(f"{config['model']} trains in one phase; --phase and --pretrained are for "
                               "two-phase models (ACMR, FOREC)")
    if phase == "pretrain" and pretrained is not None:
        raise CrossMarketError("--pretrained is a checkpoint to fine-tune from; drop it or use --phase=finetune")
    if pretrained is not None and not os.path.isfile(pretrained):
        raise CrossMarketError(f"--pretrained file {pretrained} does not exist")
    request = resume_request(config, phase, pretrained, test_protocols)
    if resume is not None:
        check_resumable(resume, request)
    run_dir = RunDirectory(config, resume)
    try:
        if resume is None:
            write_text(run_dir.file("resume.json"), json.dumps(request))
        logger = _init_logging(run_dir.file("run.log"), config)
        logger.info(f"run directory: {run_dir.path}" + (" (resumed)" if resume else ""))
        runner = CrossMarketRun(config, run_dir, callback_fn)
        results = runner.run(phase=phase, pretrained=pretrained, test_protocols=test_protocols)
        rows = results_rows(config, results)
        table = format_table(rows)
        logger.info("\n" + table, extra={"log_file_only": True})  # the caller prints the rows it gets back
        with open(run_dir.file("results.json"), "w") as f:
            json.dump({"model": config["model"], "market": config["target_market"], "seed": config["seed"],
                       "protocol": config["eval_protocol"], "train_markets": config["train_markets"],
                       "wall_seconds": round(runner.elapsed(), 1), "torch_threads": runner.threads,
                       "resumed": runner.resumed, "results": results},
                      f, indent=2)
        with open(run_dir.file("results.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        if runner.learning_curves:
            write_csv_rows(run_dir.file("learning_curves.csv"), runner.learning_curves)
            if config["cmr_plots"] and getattr(runner.model, "write_pictures", None):  # a model's own pictures
                runner.model.write_pictures(runner.dataset, run_dir.work, f"{config['model']} on "
                                            f"{config['target_market'].upper()}", config["seed"])
            if config["cmr_plots"]:
                learning_curves(runner.learning_curves, run_dir.file("learning_curves.png"),
                                f"{config['model']} on {config['target_market'].upper()}, valid under "
                                f"{config['eval_protocol']}, seed {config['seed']}", config["valid_metric"].lower())
        if runner.per_user_test:
            test_users = np.unique(runner.built[2].inter_feat[config["USER_ID_FIELD"]].numpy())
            per_user = {f"{p}/{m}": v for p, by_metric in runner.per_user_test.items() for m, v in by_metric.items()}
            write_atomically(run_dir.file("per_user_test.npz"), lambda f: np.savez(f, user_id=test_users, **per_user),
                             mode="wb")
        with open(run_dir.file("config.json"), "w") as f:
            json.dump(plain_config(config), f, indent=2, default=str)
        write_text(run_dir.file("data.json"), json.dumps(request["data"], indent=2))  # the files the run read
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM: keep what can be continued
        if saved and run_dir.resumable():
            err.kept_run = run_dir.work
            run_dir.close()
        else:
            run_dir.discard()
        raise
    except BaseException:
        if resume is None:  # a resumed folder stays as its last finished epoch left it, to resume again
            run_dir.discard()
        run_dir.close()
        raise
    finally:
        for handler in list(logging.getLogger().handlers):
            if isinstance(handler, logging.FileHandler):
                handler.close()
                logging.getLogger().removeHandler(handler)
            elif isinstance(handler, MemoryHandler):  # console lines of a run refused while reading its data
                handler.setTarget(None)  # logging's exit would still print them
                logging.getLogger().removeHandler(handler)
    if not saved:
        run_dir.discard()
        return None, rows
    run_dir.commit()
    return run_dir.path, rows


#: The API name beside RecBole's ``run_recbole``.
run_recbole_cmr = run
