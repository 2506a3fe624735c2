"""Ray Tune searches for any model on the cross-market split, selected on valid only.

A search file (yaml, see ``props/tune/``)::

    model: ACMR              # the model the space is written for (optional)
    metric: NDCG@5            # valid metric to maximise (becomes valid_metric)
    search: random            # random (also runs grid entries) | hyperopt | optuna
    num_samples: 8            # samples of the random/hyperopt/optuna part
    scheduler: asha           # asha (stops bad trials early) | fifo
    grace_period: 1           # asha: training every trial gets, in passes over all markets' training rows
    resources_per_trial: {cpu: 1, gpu: 0}
    fixed: {epochs: 5}        # config for every trial
    space:                    # one distribution per parameter
      learning_rate: {loguniform: [0.0001, 0.01]}
      n_layers: {choice: [1, 2, 4]}
      embedding_size: {grid: [16, 32]}
      dropout_prob: {uniform: [0.1, 0.5]}
      max_history_len: {randint: [20, 61]}

Every search first runs the model's yaml defaults (with ``fixed`` and the command's
overrides) beside the file's samples, once per training scope when ``train_markets`` is a
searched choice, and ASHA never stops those trials: a search cannot end below the
configurations it replaces, even where a good learning rate looks worst after one pass.
Sampling is seeded by the config's ``seed``.

Every trial reports its valid metric after each epoch of each phase (so ASHA
can stop it), and never computes a test metric. ASHA measures a trial's training in
passes over every market's training rows in the phases it validates, not in epochs: an
epoch on a small target market alone is a few gradient steps, and judging it after one
such epoch would stop every target-only trial before it learnt anything; a pre-training
that cannot be validated (FOREC's, on the other markets) runs its fixed length in every
trial and is not on the clock. After the search the best
configuration is written as ``best.yaml`` (usable with ``--config_files``) and
run once more in the driver with test metrics. A search given its folder (``--out``) again
resumes where it was interrupted: finished trials are kept, and an unfinished trial runs again from the
last epoch it finished (its run folder in the trial's folder keeps the training state). Ray's state in the
folder is small and kept by git where the trials' run folders are not, so a committed interrupted search resumes
in a clean clone too, where its unfinished trials start over.
"""

import contextlib
import copy
import glob
import json
import logging
import math
import os
import sys
import threading
import time

import numpy as np
import torch
import yaml

from recbole_cmr.config import check_overrides_fit, check_settings, did_you_mean, known_config_keys, make_config
from recbole_cmr.data.dataset import create_dataset
from recbole_cmr.quick_start import REPORTED_METRICS, find_resumable_run, run
from recbole_cmr.utils import CrossMarketError, write_csv_rows, write_text

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
SEARCHES = ("random", "hyperopt", "optuna")
SCHEDULERS = ("asha", "fifo")
DEFAULTS = {"model": None, "metric": "NDCG@5", "search": "random", "num_samples": 4, "scheduler": "asha",
            "grace_period": 1,
            "resources_per_trial": {"cpu": 1, "gpu": 0}, "fixed": {}}


def search_name(model, scope, market):
    """Folder name of the search of ``model`` in a scope (single, ++, searched, cross-market) on ``market``;
    a tuned comparison finds each cell's configuration by it."""
    return f"{model}-{scope.replace('+', 'p')}-{market.lower()}"


def _is_number(value):
    """A finite number; yaml's true and false are Python bools, which pass for the integers 1 and 0."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_search(path):
    """Read a search file; every mistake is reported before Ray starts."""
    try:
        with open(path) as f:
            search = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise CrossMarketError(f"search file {path} does not exist") from None
    except yaml.YAMLError as err:
        raise CrossMarketError(f"search file {path} is not valid yaml: {' '.join(str(err).split())}") from None
    unknown = set(search) - set(DEFAULTS) - {"space"}
    if unknown:
        raise CrossMarketError(f"search file {path}: unknown key(s) {sorted(unknown)}; "
                               f"known: {sorted(set(DEFAULTS) | {'space'})}")
    search = {**copy.deepcopy(DEFAULTS), **search}
    if not isinstance(search.get("space"), dict) or not search["space"]:
        raise CrossMarketError(f"search file {path}: 'space' must map parameters to distributions")
    if search["search"] not in SEARCHES:
        raise CrossMarketError(f"search file {path}: search must be one of {', '.join(SEARCHES)}")
    if search["scheduler"] not in SCHEDULERS:
        raise CrossMarketError(f"search file {path}: scheduler must be one of {', '.join(SCHEDULERS)}")
    if str(search["metric"]).lower() not in REPORTED_METRICS:
        raise CrossMarketError(f"search file {path}: metric must be one of "
                               f"{', '.join(m.upper() for m in REPORTED_METRICS)}, got {search['metric']!r}")
    samples = search["num_samples"]
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise CrossMarketError(f"search file {path}: num_samples must be an integer >= 1, got {samples!r}")
    if not _is_number(search["grace_period"]) or not search["grace_period"] > 0:
        raise CrossMarketError(f"search file {path}: grace_period must be a number > 0 (passes over all markets' "
                               f"training rows before ASHA may stop a trial), got {search['grace_period']!r}")
    if not isinstance(search["fixed"], dict):
        raise CrossMarketError(f"search file {path}: fixed must map config keys to values, got {search['fixed']!r}")
    resources = search["resources_per_trial"]
    if not isinstance(resources, dict) or set(resources) - {"cpu", "gpu"} \
            or not all(_is_number(v) and v >= 0 for v in resources.values()) \
            or not resources.get("cpu"):
        raise CrossMarketError(f"search file {path}: resources_per_trial must be {{cpu: N, gpu: M}} with N > 0 and "
                               f"M >= 0, got {resources!r}")
    for name, spec in search["space"].items():
        check_distribution(name, spec)
    return search


def check_distribution(name, spec):
    if not isinstance(spec, dict) or len(spec) != 1:
        raise CrossMarketError(f"parameter {name!r}: give exactly one distribution, e.g. {{choice: [1, 2]}}")
    (kind, args), = spec.items()
    if kind not in DISTRIBUTIONS:
        raise CrossMarketError(f"parameter {name!r}: unknown distribution {kind!r}; "
                               f"use one of {', '.join(DISTRIBUTIONS)}")
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            raise CrossMarketError(f"parameter {name!r}: {kind} needs a non-empty list of values")
        return
    if not isinstance(args, list) or len(args) != 2 or not all(_is_number(a) for a in args):
        raise CrossMarketError(f"parameter {name!r}: {kind} needs [low, high] (two numbers), got {args!r}")
    low, high = args
    if low >= high:
        raise CrossMarketError(f"parameter {name!r}: {kind} needs low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise CrossMarketError(f"parameter {name!r}: loguniform needs low > 0, got {low}")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise CrossMarketError(f"parameter {name!r}: randint needs integer bounds")


def check_search_keys(search, model, config_files):
    """Refuse a key of ``fixed`` or ``space`` as the command line refuses ``--epochz=1``: a typo, or a setting of
    another model, would pass into every trial and best.yaml and be read by none."""
    known = known_config_keys(config_files)
    for part in ("fixed", "space"):
        unknown = [key for key in search[part] if key not in known]
        if unknown:
            raise CrossMarketError(f"the search file's {part} has unknown config key {unknown[0]!r}"
                                   f"{did_you_mean(unknown[0], known)}; its keys must be ones RecBole's, the "
                                   "plugin's or a --config_files yaml defines")
        try:
            check_overrides_fit(list(search[part]), [model], config_files)
        except CrossMarketError as err:
            raise CrossMarketError(f"the search file's {part}: {err}") from None


def check_parameters(search, model, market, config_files, config_dict):
    """Every searched parameter must be a config key of the model; also validates the fixed config."""
    check_search_keys(search, model, config_files)
    config = make_config(model, market, config_files, {**config_dict, **search["fixed"]})
    missing = [name for name in search["space"] if name not in config.final_config_dict]
    if missing:
        raise CrossMarketError(f"model {model} has no parameter(s) {missing}; searchable keys are those of "
                               f"RecBole's and the plugin's yaml for {model}")
    for name, spec in search["space"].items():
        (kind, args), = spec.items()
        values = args if kind in ("choice", "grid") else [args[0], args[1] - 1 if kind == "randint" else args[1]]
        for value in values:
            try:
                check_settings({**config.final_config_dict, name: value, "model_class": config.model_class})
            except CrossMarketError as err:
                raise CrossMarketError(f"search space: {name} = {value!r} cannot run ({err})") from None
    return config


def param_space(search):
    from ray import tune

    build = {"choice": tune.choice, "grid": tune.grid_search, "uniform": lambda a: tune.uniform(*a),
             "loguniform": lambda a: tune.loguniform(*a), "randint": lambda a: tune.randint(*a)}
    return {name: build[kind](args) for name, spec in search["space"].items() for kind, args in spec.items()}


def default_points(search, base):
    """The yaml defaults as the search's first trials: one per scope when the scope is a searched choice, since
    such a search replaces the defaults of every scope it covers."""
    point = {name: base[name] for name in search["space"]}
    scopes = search["space"].get("train_markets", {}).get("choice", [])
    return [{**point, "train_markets": scope} for scope in scopes] or [point]


def _search_algorithm(search, defaults, seed):
    """The search's sampler, seeded, with the defaults as its first points."""
    if search["search"] == "random":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(points_to_evaluate=defaults, random_state=seed)
    try:
        if search["search"] == "hyperopt":
            from ray.tune.search.hyperopt import HyperOptSearch

            return HyperOptSearch(points_to_evaluate=defaults, random_state_seed=seed)
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(points_to_evaluate=defaults, seed=seed)
    except (ImportError, AssertionError) as err:
        raise CrossMarketError(f"search: {search['search']} needs its package installed ({err}); "
                               "use search: random or pip install it") from None


def is_defaults(config, defaults):
    """Whether a trial runs the model's defaults in one scope (a sample equal to them is the same run)."""
    return any(all(config.get(name) == value for name, value in point.items()) for point in defaults)


def defaults_keeping_asha(defaults, grace_period):
    """ASHA on training passes that never stops the defaults' trials; their scores still set the rungs' cut-offs."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class DefaultsKeepingASHA(ASHAScheduler):
        def on_trial_result(self, runner, trial, result):
            decision = super().on_trial_result(runner, trial, result)
            return TrialScheduler.CONTINUE if is_defaults(trial.config, defaults) else decision

    return DefaultsKeepingASHA(time_attr="data_passes", grace_period=grace_period, max_t=10_000)


def make_trainable(model, market, config_files, config_dict):
    """The per-trial function: one run without test metrics, reporting valid after every epoch."""

    def trainable(params):
        from ray.air import session

        started = time.process_time()  # CPU seconds of this trial's process, whatever else the machine runs

        passes = [0.0]

        def report(phase, epoch, score, data_passes):
            passes[0] = data_passes
            session.report({"valid_score": score, "phase": phase, "epoch": epoch, "data_passes": data_passes,
                            "cpu_s": time.process_time() - started})

        trial_dict = {**config_dict, **params, "checkpoint_dir": os.path.abspath("checkpoints"), "state": "WARNING",
                      "cmr_plots": False}
        # RecBole's Config reads --key=value from the process's arguments, which in a Ray worker are Ray's own
        # (--node-manager-port=... would enter the trial's config, and differ in a resumed search)
        sys.argv = sys.argv[:1]
        # a trial restarted by a resumed search continues its run from the last epoch it finished; the run's
        # folder in the trial's folder holds only that state while it runs (saved=False: Ray keeps the results)
        resume = find_resumable_run(make_config(model, market, config_files, trial_dict), test_protocols=[])
        _, rows = run(model, market, config_files, trial_dict, test_protocols=[], callback_fn=report, resume=resume,
                      saved=False)
        final = rows[-1]
        session.report({"valid_score": final[config_dict["valid_metric"].lower()], "phase": "done",
                        "epoch": -1, "data_passes": passes[0], "cpu_s": time.process_time() - started,
                        "resumed": resume is not None, **{f"valid_{m}": final[m] for m in REPORTED_METRICS}})

    return trainable


def tune_model(model, market, search_file, config_files=None, config_dict=None, ray_address=None, out_dir=None,
               test_best=True):
    """Run a search; returns the results directory. Test metrics only for the selected configuration, which
    is run once more when ``test_best`` (a tuned comparison runs it on its own seeds instead)."""
    import ray
    from ray import air, tune
    from ray.tune.schedulers import FIFOScheduler

    search = load_search(search_file)
    address = ray_address or os.environ.get("RAY_ADDRESS")
    check_local_resources(search["resources_per_trial"], address)
    if search["model"] not in (None, model):
        raise CrossMarketError(f"search file {search_file} is written for {search['model']}, not {model}; "
                               f"use --model={search['model']} or a search file of {model}")
    config_files = [os.path.abspath(f) for f in (config_files or [])]
    config_dict = dict(config_dict or {})
    config_dict["valid_metric"] = search["metric"]
    base = check_parameters(search, model, market, config_files, config_dict)
    create_dataset(base).split_indices()  # the split's own checks (an unknown market, ...) before any folder or Ray
    defaults = default_points(search, base)
    market = base["target_market"]  # --market, else the config files' or the yaml's target_market
    config_dict["data_path"] = os.path.dirname(base["data_path"])  # absolute: Ray runs each trial in its own folder
    config_dict.update(search["fixed"])
    config_dict.setdefault("eval_protocol", base["eval_protocol"])
    # each trial owns its CPUs: torch threads beside other busy trials would oversubscribe the machine
    config_dict.setdefault("torch_threads", max(1, int(search["resources_per_trial"].get("cpu") or 1)))
    out_dir = os.path.abspath(out_dir or os.path.join(
        base["checkpoint_dir"], f"tune-{model}-{base['target_market']}-{time.strftime('%Y%m%d-%H%M%S')}"))
    resuming = check_search_folder(out_dir, {"model": model, "market": base["target_market"], "search": search,
                                             "config": {k: v for k, v in config_dict.items() if k != "data_path"},
                                             "defaults_trials": defaults,
                                             "config_files": config_files})
    print(f"{'resuming the search' if resuming else 'new search'} in {out_dir}", flush=True)

    try:
        if address:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
        scheduler = defaults_keeping_asha(defaults, search["grace_period"]) if search["scheduler"] == "asha" \
            else FIFOScheduler()
        resources = {k: v for k, v in search["resources_per_trial"].items() if v}
        trainable = tune.with_resources(make_trainable(model, market, config_files, config_dict), resources)
        # an interrupted search keeps its finished trials; unfinished and errored ones run again
        tuner = tune.Tuner.restore(os.path.join(out_dir, "ray"), trainable, resume_unfinished=True,
                                   restart_errored=True) if resuming else tune.Tuner(
            trainable,
            param_space=param_space(search),
            tune_config=tune.TuneConfig(metric="valid_score", mode="max", scheduler=scheduler,
                                        search_alg=_search_algorithm(search, defaults, base["seed"]),
                                        num_samples=search["num_samples"] + len(defaults)),  # defaults first
            run_config=air.RunConfig(name="ray", storage_path=out_dir, verbose=1 if sys.stdout.isatty() else 0,
                                     callbacks=[] if sys.stdout.isatty() else
                                     [_trial_lines(trial_count(search, len(defaults)))]),
        )
        with SearchClock(out_dir), _without_ray_interrupt_lines():
            grid = tuner.fit()
        if interrupted(grid, trial_count(search, len(defaults))):
            raise KeyboardInterrupt
    except KeyboardInterrupt as err:
        err.kept_search = out_dir  # the same command resumes the search
        raise
    finally:
        ray.shutdown()
    return summarize(grid, search, defaults, model, market, config_files, config_dict, out_dir, test_best)


#: Ray's log lines at the first Ctrl-C (with its advice to call Tuner.restore), and on trials that have not reported:
#: the command's own line says the search was interrupted and that the same command resumes it.
RAY_INTERRUPT_LINES = {"ray.tune.tune": ("Stop signal received", "Experiment has been interrupted"),
                       "ray.tune.analysis.experiment_analysis": ("Failed to read the results",)}


@contextlib.contextmanager
def _without_ray_interrupt_lines():
    """Drops ``RAY_INTERRUPT_LINES`` while Ray runs the search."""
    filters = {name: lambda record, starts=starts: not str(record.msg).startswith(starts)
               for name, starts in RAY_INTERRUPT_LINES.items()}
    for name, keep in filters.items():
        logging.getLogger(name).addFilter(keep)
    try:
        yield
    finally:
        for name, keep in filters.items():
            logging.getLogger(name).removeFilter(keep)


def interrupted(grid, total):
    """Whether Ray ended ``fit()`` before the search's end, as it does at the first Ctrl-C (its state saved, every
    trial marked terminated): a trial still to be sampled, or one that neither failed nor ended (a trial that returns,
    or that the scheduler stops, gets ``done`` in its last result)."""
    return len(grid) < total or any(not r.error and not (r.metrics or {}).get("done") for r in grid)


def trial_count(search, defaults):
    """Trials a search runs: its ``defaults`` trials, then ``num_samples`` times every combination of its ``grid``
    entries."""
    grid = [len(spec["grid"]) for spec in search["space"].values() if "grid" in spec]
    return defaults + search["num_samples"] * int(np.prod(grid))


def _trial_lines(total):
    """A Ray callback printing one plain line per finished trial: Ray's own status table needs a terminal, and a
    search in a log file would otherwise say nothing for hours."""
    from ray.tune import Callback

    class TrialLines(Callback):
        def setup(self, **info):
            # a resumed search restores this callback as it was pickled: minutes count from this command's start
            self.started = time.time()

        def _line(self, trials, trial, text):
            finished = 1 + sum(t.status in ("TERMINATED", "ERROR") for t in trials if t is not trial)
            print(f"[{finished}/{total} trials, {(time.time() - self.started) / 60:.0f} min] {text}", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            result = trial.last_result or {}
            how = ("ran to its selection" if result.get("phase") == "done" else
                   f"stopped by the scheduler after {result.get('phase')} epoch {result.get('epoch')}")
            params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.config.items())
            self._line(trials, trial, f"{params}: valid {result.get('valid_score', float('nan')):.4f}, {how}")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._line(trials, trial, f"trial {trial.trial_id} failed (its error is in the search folder)")

    return TrialLines()


def check_local_resources(resources, address):
    """On this machine alone, a trial asking for more than it has would wait for ever: say so instead."""
    if address:
        return
    cpus = os.cpu_count() or 1
    if resources.get("cpu", 0) > cpus:
        raise CrossMarketError(f"resources_per_trial asks for {resources['cpu']} CPUs per trial; this machine has "
                               f"{cpus}: lower it, or join a larger cluster with --ray_address")
    if resources.get("gpu") and not torch.cuda.is_available():
        raise CrossMarketError("resources_per_trial asks for a GPU and this machine has none: set gpu: 0, or join "
                               "a cluster with GPUs with --ray_address")


class SearchClock:
    """Keeps ``search_seconds.txt`` (wall seconds, summed over the sessions of a resumed search) current while a
    search runs, from a thread of its own, so a session that is killed still counts up to its last half minute."""

    def __init__(self, out_dir, every_s=30.0):
        self.path = os.path.join(out_dir, "search_seconds.txt")
        self.before = float(open(self.path).read()) if os.path.exists(self.path) else 0.0
        self.every_s = every_s
        self.stop = threading.Event()

    def write(self):
        write_text(self.path, f"{self.before + time.time() - self.started:.1f}\n")

    def _tick(self):
        while not self.stop.wait(self.every_s):
            self.write()

    def __enter__(self):
        self.started = time.time()
        self.thread = threading.Thread(target=self._tick, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.write()


def _trial_number(result, position):
    """A trial's number as Ray names its folder (``..._00007``), which a resumed search keeps."""
    trial_id = str((result.metrics or {}).get("trial_id", ""))
    suffix = trial_id.rsplit("_", 1)[-1]
    return int(suffix) if "_" in trial_id and suffix.isdigit() else position


def check_search_folder(out_dir, settings):
    """Create the search folder, or find an interrupted search of the same settings in it to resume.

    Returns True when resuming (Ray saved the search's state). A finished search, or one run with other settings, is
    refused.
    """
    recorded_path = os.path.join(out_dir, "search.json")
    settings = json.loads(json.dumps(settings, sort_keys=True, default=str))
    if not os.path.exists(out_dir):
        os.makedirs(out_dir)
        write_text(recorded_path, json.dumps(settings, indent=2, sort_keys=True))
        return False
    if not os.path.isdir(out_dir):
        raise CrossMarketError(f"--out {out_dir} is a file; a search writes a folder: choose another --out")
    if os.path.exists(os.path.join(out_dir, "summary.md")):
        raise CrossMarketError(f"{out_dir} holds a finished search (summary.md); choose another --out")
    if not os.path.exists(recorded_path):
        raise CrossMarketError(f"{out_dir} exists but holds no search to resume; choose another --out")
    try:
        with open(recorded_path, encoding="utf-8") as f:
            recorded = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CrossMarketError(f"{recorded_path} cannot be read ({err}); restore it, or choose another --out") from None
    if recorded != settings:
        raise CrossMarketError(f"{out_dir} holds a search with other settings (see {recorded_path}); resume it "
                               "with the same search file and overrides, or choose another --out")
    # a session stopped before Ray saved the search's state (Ctrl-C while Ray starts) left nothing to restore: the
    # search starts again in its folder
    ray_dir = os.path.join(out_dir, "ray")
    saved = glob.glob(os.path.join(ray_dir, "experiment_state-*.json"))
    return bool(saved) and os.path.exists(os.path.join(ray_dir, "tuner.pkl"))


def _total(history, column):
    """A trial's running total ``column`` at its last report: the largest value it reported (NaN if none)."""
    if history is None or column not in history or history[column].isna().all():
        return float("nan")
    return round(float(history[column].max()), 1)


def summarize(grid, search, defaults, model, market, config_files, config_dict, out_dir, test_best=True):
    """Write trials, per-epoch valid metrics, the sorted summary, best.yaml and the best model's test metrics."""
    names = list(search["space"])
    trials, epochs = [], []
    for position, result in enumerate(grid):
        i = _trial_number(result, position)
        history = result.metrics_dataframe
        per_epoch = history[history["phase"] != "done"] if history is not None else []
        for _, row in (per_epoch.iterrows() if len(per_epoch) else []):
            epochs.append({"trial": i, "phase": row["phase"], "epoch": int(row["epoch"]),
                           "valid_score": float(row["valid_score"])})
        done = history[history["phase"] == "done"] if history is not None else []
        finished = len(done) > 0
        config = result.config or {}  # Ray has no config for a trial that never reported
        trials.append({"trial": i, "defaults": is_defaults(config, defaults), **{n: config.get(n) for n in names},
                       "valid_score": float(done["valid_score"].iloc[-1]) if finished else float("nan"),
                       "best_epoch_score": float(per_epoch["valid_score"].max()) if len(per_epoch) else float("nan"),
                       "epochs_run": len(per_epoch), "stopped_early": not finished,
                       "seconds": _total(history, "time_total_s"), "cpu_seconds": _total(history, "cpu_s"),
                       # continued from its last epoch by a resumed search: its seconds count its last process only
                       # (read from its last result: progress.csv keeps only the columns of a trial's first report)
                       "resumed": bool(finished and (result.metrics or {}).get("resumed")),
                       "error": str(result.error)[:200] if result.error else ""})
    # a trial counts by the valid score of the model its run selects (for ACMR: the fine-tuned one),
    # so only finished trials compete; ASHA compared per-epoch scores along the way
    # ties go to the lower trial number: the defaults, then the earlier samples
    ok = sorted((t for t in trials if not t["error"] and not t["stopped_early"]),
                key=lambda t: (-t["valid_score"], t["trial"]))
    if not ok:
        raise CrossMarketError(f"no trial finished; see the trial errors in {out_dir}")
    write_csv_rows(os.path.join(out_dir, "trials.csv"), ok + [t for t in trials if t not in ok])
    write_csv_rows(os.path.join(out_dir, "epochs.csv"), epochs)
    best_params = {n: ok[0][n] for n in names}
    best_yaml = os.path.join(out_dir, "best.yaml")
    write_text(best_yaml, yaml.safe_dump({**search["fixed"], **best_params}, sort_keys=True))
    rows = []
    if test_best:
        _, rows = run(model, market, config_files + [best_yaml],
                      {k: v for k, v in config_dict.items() if k not in best_params}, callback_fn=None)
    stopped = sum(t["stopped_early"] and not t["error"] for t in trials)
    defaults_valid = max((t["valid_score"] for t in ok if t["defaults"]), default=float("nan"))
    cpus = float(search["resources_per_trial"].get("cpu") or 1)
    cost = {"search_wall_s": float(open(os.path.join(out_dir, "search_seconds.txt")).read()),
            "trial_wall_cpu_s": round(cpus * sum(t["seconds"] for t in trials if t["seconds"] == t["seconds"]), 1),
            "trial_cpu_s": round(sum(t["cpu_seconds"] for t in trials if t["cpu_seconds"] == t["cpu_seconds"]), 1)}
    header = (f"{len(trials)} trials, {stopped} stopped early by {search['scheduler']}, metric valid "
              f"{search['metric']}; search {cost['search_wall_s'] / 60:.1f} wall min, trials "
              f"{cost['trial_wall_cpu_s'] / 60:.1f} min x CPUs, {cost['trial_cpu_s'] / 60:.1f} CPU min used")
    lines = [f"# search: {model} on {market.upper()} | protocol: {config_dict['eval_protocol']} | {header}\n",
             "| trial | " + " | ".join(names) + " | valid (selected model) | epochs |",
             "|---|" + "---|" * (len(names) + 2)]
    lines += [f"| {t['trial']}{' (defaults)' if t['defaults'] else ''} | " + " | ".join(str(t[n]) for n in names)
              + f" | {t['valid_score']:.4f} | {t['epochs_run']} |" for t in ok]
    lines.append("\nSelected configuration (valid only), then tested once:\n" if rows else
                 "\nSelected configuration (valid only): best.yaml; not tested here (a tuned comparison tests it)")
    lines += [f"- {r['phase']} {r['split']} ({r['protocol']}): "
              + ", ".join(f"{m} {r[m]:.4f}" for m in REPORTED_METRICS) for r in rows]
    write_text(os.path.join(out_dir, "best_test.json"),
               json.dumps({"best_params": best_params, "rows": rows, "trials": len(trials), "stopped_early": stopped,
                           "defaults_valid": defaults_valid, **cost}, indent=2, default=str))
    write_text(os.path.join(out_dir, "summary.md"), "\n".join(lines) + "\n")  # last: it marks the search finished
    return out_dir

