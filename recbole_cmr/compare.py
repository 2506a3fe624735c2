"""Compare models on one split: a resumable grid, a markdown table, a plot and paired significance tests.

    python run_recbole_cmr.py --compare --models ACMR,Pop,EASE --markets IN,JP --seeds 1,2,3 --protocol market

Built-in models run in each requested scope (``single``: target market only,
``++``: all markets); cross-market models (e.g. ACMR, FOREC, M3Rec, CMRanker) fix
their own scope and run once. Every cell is one ``quick_start.run``: selected
on valid under the grid's protocol, tested under it and any further test
protocols (one trained model, several candidate sets). Finished cells are read
back from ``results.csv``, so an interrupted grid resumes where it stopped, and a
killed cell continues from its last finished epoch (its unfinished run folder
keeps the training state, see :mod:`recbole_cmr.quick_start`).

Several grids (``jobs`` helper processes of one grid, other commands, or
machines sharing the folder) may fill one folder at once: each cell is claimed
by a lock in ``.locks/`` while it runs, so another grid skips it, and
``results.csv`` and the tables are rewritten under a lock from the file's rows,
keeping every grid's cells.

Two-phase models keep their pre-trained checkpoint in ``pretrained_dir``
(default: ``pretrained/`` beside the grid's folder) and later cells with the
same model, market, seed and settings only fine-tune from it. A pre-training
that selects its epoch on valid (``pretrain_valid: True``) is reused only
under the same protocol; one that keeps its last epoch (FOREC) serves every
protocol.
"""

import csv
import glob
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
import zipfile

import numpy as np
import torch
from scipy import stats

from recbole_cmr.config import make_config
from recbole_cmr.data.dataset import create_dataset
from recbole_cmr.data.protocol import get_protocol
from recbole_cmr.evaluator import EVALUATION
from recbole_cmr.model.abstract_recommender import CrossMarketModel
from recbole_cmr.plots import comparison
from recbole_cmr.quick_start import find_resumable_run, holds_training_state, run, run_seconds
from recbole_cmr.tune import search_name
from recbole_cmr.utils import (
    CrossMarketError,
    is_locked,
    locked,
    read_csv_rows,
    release,
    try_lock,
    write_atomically,
    write_csv_rows,
    write_text,
)

#: Built-ins' scopes: train_markets per scope; "searched" takes it from the cell's tuned configuration.
SCOPES = {"single": "target", "++": "all", "searched": None}
METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")
FIELDS = ["label", "model", "scope", "market", "seed", "selected_on", "protocol", "split", *METRICS, "mrr@10",
          "seconds"]


#: Models without hyper-parameters: a tuned grid runs them as they are, beside the tuned ones.
NOTHING_TO_TUNE = ("Pop",)
#: The cross-market models a grid tests, each against the best other model per market (Wilcoxon).
REFERENCES = ("ACMR", "CMRanker")


def plan(models, markets, seeds, protocol, scopes, config_file_list, config_dict, tuned_dir=None):
    """Validate the whole grid before running anything; returns the cells in order."""
    for what, values in (("--models", models), ("--markets", [str(m).lower() for m in markets]),
                         ("--seeds", seeds), ("--scopes", scopes)):
        repeated = sorted({str(v) for v in values if list(values).count(v) > 1})
        if repeated:
            raise CrossMarketError(f"{what} lists {', '.join(repeated)} more than once; give each once")
    bad_seeds = [s for s in seeds if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < 2 ** 32]
    if bad_seeds:
        raise CrossMarketError(f"--seeds must be integers from 0 to 2**32 - 1, got {bad_seeds[0]!r}")
    for scope in scopes:
        if scope not in SCOPES:
            raise CrossMarketError(f"unknown scope {scope!r}; use single (target market only), ++ (all markets) "
                                   "or, with tuned configurations, searched (the search chose train_markets)")
        if scope == "searched" and not tuned_dir:
            raise CrossMarketError("scope 'searched' takes train_markets from tuned configurations: give their folder")
    cells = []
    for model in models:
        config = make_config(model, markets[0], config_file_list, {**config_dict, "eval_protocol": protocol})
        cross_market = issubclass(config.model_class, CrossMarketModel)
        for scope in (["cross-market"] if cross_market else scopes):
            for market in markets:
                for seed in seeds:
                    scope_text = "scope searched" if scope == "searched" else scope
                    label = (config.model_class.label or model) if cross_market else f"{model} ({scope_text})"
                    cells.append((label, model, scope, market, seed))
    if tuned_dir:
        missing = sorted({tuned_file(tuned_dir, cell) for cell in cells if cell[1] not in NOTHING_TO_TUNE}
                         - set(glob.glob(os.path.join(tuned_dir, "*", "best.yaml"))))
        if missing:
            raise CrossMarketError(f"no finished search for {len(missing)} cell(s), first {missing[0]}; run the "
                                   "searches first (python bench/tune_markets.py), or drop those models/markets")
    dataset = create_dataset(make_config(models[0], markets[0], config_file_list, {**config_dict, "state": "WARNING"}))
    for market in markets:
        dataset.market_id(market)  # unknown markets list the known ones
    return cells


def tuned_file(tuned_dir, cell):
    """The selected configuration (``best.yaml``) of a cell's search in ``tuned_dir``."""
    _, model, scope, market, _ = cell
    return os.path.join(tuned_dir, search_name(model, scope, market), "best.yaml")


def cell_config_files(cell, config_file_list, tuned_dir):
    """A cell's config files: the grid's, then its tuned configuration if the grid is tuned."""
    tuned = tuned_dir and cell[1] not in NOTHING_TO_TUNE
    return list(config_file_list or []) + ([tuned_file(tuned_dir, cell)] if tuned else [])


#: Config keys that never change what a pre-training produces.
RUN_ONLY_KEYS = {"checkpoint_dir", "state", "show_progress"}
#: ...and those that only matter when valid selects the pre-training epoch.
EVALUATION_KEYS = {"eval_protocol", "eval_args", "valid_neg_sample_args", "test_neg_sample_args", "eval_neg_num",
                   "eval_batch_size", "metrics", "topk", "valid_metric", "valid_metric_bigger", "metric_decimal_place"}


def pretrained_name(cell, protocol, config_file_list, config_dict):
    """File name of a cell's pre-trained checkpoint, keyed by every setting it depends on; None for one phase."""
    label, model, scope, market, seed = cell
    config = make_config(model, market, config_file_list,
                         {**config_dict, "eval_protocol": protocol, "seed": int(seed)})
    if not config["finetune"]:
        return None
    selection = protocol if config["pretrain_valid"] else "last"
    ignored = RUN_ONLY_KEYS | (EVALUATION_KEYS if selection == "last" else set())
    settings = {k: v for k, v in config.final_config_dict.items()
                if k not in ignored and isinstance(v, (str, int, float, bool, list, dict, type(None)))}
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{model}-{market.lower()}-seed{seed}-{selection}-{digest}.pth"


def read_grid_rows(results):
    """A grid's ``results.csv`` (no rows if absent), refused whole if a column or a value cannot be the grid's."""
    try:
        rows = read_csv_rows(results)
    except (UnicodeDecodeError, csv.Error) as err:
        raise CrossMarketError(f"{results} cannot be read ({err}); restore it, or choose another --out") from None
    for line, row in enumerate(rows, 2):
        missing = [f for f in FIELDS if row.get(f) in (None, "")]
        if missing:
            raise CrossMarketError(f"{results}: line {line} has no {', '.join(missing)}; restore the file, or delete "
                                   "the line to run its cell again")
        try:
            [float(row[m]) for m in (*METRICS, "mrr@10", "seconds")] + [int(row["seed"])]
        except ValueError:
            raise CrossMarketError(f"{results}: line {line} holds a value that is not a number; restore the file, "
                                   "or delete the line to run its cell again") from None
    return rows


def check_grid_settings(out_dir, config_file_list, config_dict, tuned_dir=None):
    """Cells in one folder must share their settings, or resuming would mix two grids in one table.

    The first run records them in ``settings.json``; a later run with other settings is refused.
    """
    files = []  # contents, wherever the clone is
    for name in config_file_list or []:
        with open(name, encoding="utf-8") as f:
            files.append(f.read())
    settings = json.loads(json.dumps({"config": {k: v for k, v in config_dict.items() if k not in RUN_ONLY_KEYS},
                                      "config_files": files, "evaluation": EVALUATION,
                                      **({"tuned": os.path.basename(tuned_dir)} if tuned_dir else {})},
                                     sort_keys=True, default=str))
    path = os.path.join(out_dir, "settings.json")
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                recorded = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CrossMarketError(f"{path} cannot be read ({err}); restore it, or choose another --out") from None
        if not isinstance(recorded, dict) or not {"config", "config_files"} <= set(recorded):
            raise CrossMarketError(f"{path} is not a grid's settings file; restore it, or choose another --out")
        if recorded != settings:
            changed = sorted(k for k in set(recorded["config"]) | set(settings["config"])
                             if recorded["config"].get(k) != settings["config"].get(k))
            if recorded["config_files"] != settings["config_files"]:
                changed.append("--config_files")
            if recorded.get("evaluation") != settings["evaluation"]:
                changed.append("the evaluation rules (ties, untrained items)")
            if recorded.get("tuned") != settings.get("tuned"):
                changed.append("the tuned configurations")
            raise CrossMarketError(f"{out_dir} holds cells run with other settings ({', '.join(changed)} differ; "
                                   f"recorded in {path}); use those settings or choose another --out")
        return
    write_text(path, json.dumps(settings, indent=2, sort_keys=True))


def remove_stale_runs(runs_dir):
    """Run folders still named ``*.incomplete`` when a grid starts belong to cells that were killed or that
    another grid is running now (those are locked, see :class:`recbole_cmr.quick_start.RunDirectory`); killed
    ones without a finished first epoch hold nothing to continue from and are removed, the others are kept for
    their cells to resume."""
    unfinished = sorted(glob.glob(os.path.join(runs_dir, "*.incomplete")))
    stale = [path for path in unfinished if not holds_training_state(path) and not is_locked(path)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    if stale:
        print(f"removed {len(stale)} unfinished run folder(s) of interrupted cells from {runs_dir}", flush=True)


def run_cell(cell, protocol, test_protocols, config_file_list, config_dict, out_dir, pretrained_dir):
    label, model, scope, market, seed = cell
    cell_dict = {**config_dict, "eval_protocol": protocol, "seed": int(seed), "state": "WARNING",
                 "checkpoint_dir": os.path.join(out_dir, "runs")}
    if SCOPES.get(scope):
        cell_dict["train_markets"] = SCOPES[scope]
    name = pretrained_name(cell, protocol, config_file_list, cell_dict)
    cached = os.path.join(pretrained_dir, name) if name else None
    reuse = cached if cached and os.path.exists(cached) and _reusable_pretraining(cached) else None
    if reuse:
        print(f"  fine-tuning from the pre-trained {cached}", flush=True)
    resume = find_resumable_run(make_config(model, market, config_file_list, cell_dict), pretrained=reuse,
                                test_protocols=test_protocols)
    if resume:
        print(f"  continuing the interrupted run {resume}", flush=True)
    path, rows = run(model, market, config_file_list, cell_dict, pretrained=reuse, test_protocols=test_protocols,
                     resume=resume)
    seconds = run_seconds(path)
    if cached and not reuse:
        os.makedirs(pretrained_dir, exist_ok=True)
        with open(os.path.join(path, "pretrain.pth"), "rb") as source:
            write_atomically(cached, lambda f: shutil.copyfileobj(source, f), mode="wb")
    per_user_dir = os.path.join(out_dir, "per_user")
    os.makedirs(per_user_dir, exist_ok=True)
    with open(os.path.join(path, "per_user_test.npz"), "rb") as source:  # whole, for a grid beside it reading it
        write_atomically(os.path.join(per_user_dir, _cell_name(cell) + ".npz"),
                         lambda f: shutil.copyfileobj(source, f), mode="wb")
    final = rows[-1]["phase"]
    return [{"label": label, "model": model, "scope": scope, "market": market.lower(), "seed": seed,
             "selected_on": protocol, "protocol": r["protocol"], "split": r["split"],
             **{m: r[m] for m in (*METRICS, "mrr@10")}, "seconds": seconds}
            for r in rows if r["phase"] == final]


def _reusable_pretraining(path):
    """A cached pre-training is reused only if it records what a fine-tune needs to give the two-phase run's
    numbers (the generators' state, the items it trained on); ones lacking either, or unreadable, are pre-trained
    again."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, foreign or unsafe files: replaced by a new pre-training
        print(f"  cached pre-training {path} cannot be read ({type(err).__name__}); pre-training again", flush=True)
        return False
    return isinstance(checkpoint, dict) and "finetune_rng_state" in checkpoint and "trained_items" in checkpoint


def _cell_name(cell):
    label, model, scope, market, seed = cell
    return f"{model}-{scope.replace('+', 'p')}-{market.lower()}-{seed}"


def paired_test(out_dir, rows, a_label, b_label, market, protocol, metric="ndcg@10"):
    """Wilcoxon signed-rank test over (seed, user) pairs of two labels' per-user test values."""
    cells = {(r["label"], str(r["seed"])): (r["label"], r["model"], r["scope"], r["market"], r["seed"])
             for r in rows if r["market"] == market and r["split"] == "test"}

    def load(label, seed):
        path = os.path.join(out_dir, "per_user", _cell_name(cells[(label, seed)]) + ".npz")
        if not os.path.exists(path):
            return None
        try:
            data = np.load(path)
            return data["user_id"], data[f"{protocol}/{metric}"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            raise CrossMarketError(f"per-user file {path} cannot be read ({type(err).__name__}); delete it and its "
                                   "cell's lines in results.csv to run the cell again") from None

    a, b = [], []
    for seed in sorted({seed for label, seed in cells if label == a_label} & {seed for label, seed in cells
                                                                              if label == b_label}):
        pair = load(a_label, seed), load(b_label, seed)
        if pair[0] is not None and pair[1] is not None:
            if not np.array_equal(pair[0][0], pair[1][0]):
                raise CrossMarketError(f"{a_label} and {b_label} on {market} seed {seed} were tested on different "
                                       "users; their per_user files come from different splits")
            a.append(pair[0][1])
            b.append(pair[1][1])
    if not a:
        return None
    a, b = np.concatenate(a), np.concatenate(b)
    if len(a) != len(b) or len(a) == 0 or np.allclose(a, b):
        return None
    return float(stats.wilcoxon(a, b).pvalue)


def _wall_minutes(test_rows):
    return sum(float(r.get("seconds") or 0) for r in test_rows) / 60


def mean_text(values, best, n_seeds):
    """A table cell: the mean (± std over several seeds), bold when it is the column's best; a cell run on
    fewer than the column's ``n_seeds`` seeds says so, since its mean is not over the same splits."""
    text = f"{np.mean(values):.4f}" + (f" ± {np.std(values):.4f}" if len(values) > 1 else "")
    text = f"**{text}**" if np.isclose(np.mean(values), best) else text
    return text + (f" ({len(values)} of {n_seeds} seeds)" if len(values) < n_seeds else "")


def markdown(rows, out_dir, protocol, references=REFERENCES):
    """Tables of the test metrics measured under ``protocol``; each of ``references`` (labels) is tested
    against the best other model per market."""
    test = [r for r in rows if r["split"] == "test" and r["protocol"] == protocol]
    selected_on = sorted({r["selected_on"] for r in test})
    markets = sorted({r["market"] for r in test})
    labels = list(dict.fromkeys(r["label"] for r in test))
    seeds = {m: sorted({str(r["seed"]) for r in test if r["market"] == m}, key=int) for m in markets}
    if len({tuple(v) for v in seeds.values()}) == 1:
        seed_text = ", ".join(next(iter(seeds.values())))
    else:
        seed_text = "; ".join(f"{m.upper()} {', '.join(v)}" for m, v in seeds.items())
    out = [f"# Comparison: test metrics, protocol `{protocol}`, seeds {seed_text}\n",
           "Mean ± std over seeds; the best mean per column is bold; a cell run on fewer of the market's seeds "
           "says how many. Selection (early stopping, best epoch) on "
           f"valid only, under protocol `{', '.join(selected_on)}`. "
           f"Wall time of the {len(test)} finished cells: {_wall_minutes(test):.1f} min on this machine "
           "(a reused pre-training is counted once).\n"]
    for metric in METRICS:
        out.append(f"\n## {metric} (protocol `{protocol}`)\n")
        out.append("| model | " + " | ".join(m.upper() for m in markets) + " |")
        out.append("|---|" + "---|" * len(markets))
        means = {(label, m): [float(r[metric]) for r in test if r["label"] == label and r["market"] == m]
                 for label in labels for m in markets}
        best = {m: max((np.mean(v) for (_, mk), v in means.items() if mk == m and v), default=None) for m in markets}
        for label in labels:
            cells_md = []
            for m in markets:
                v = means[(label, m)]
                if not v:
                    cells_md.append("")
                    continue
                cells_md.append(mean_text(v, best[m], len(seeds[m])))
            out.append(f"| {label} | " + " | ".join(cells_md) + " |")
    for reference in [label for label in references if label in labels and len(labels) > 1]:
        out.append(f"\n## {reference} vs the best other model (per-user test NDCG@10, Wilcoxon signed-rank, paired by "
                   "seed and user over the seeds both have; the NDCG@10 columns are each model's mean over its own "
                   "seeds)\n")
        out.append(f"| market | best other model | its NDCG@10 | {reference} NDCG@10 | relative | p-value |\n"
                   "|---|---|---|---|---|---|")
        for m in markets:
            scores = {label: np.mean([float(r["ndcg@10"]) for r in test if r["label"] == label and r["market"] == m]
                                     or [np.nan]) for label in labels}
            others = {label: s for label, s in scores.items() if label != reference and not np.isnan(s)}
            if not others or np.isnan(scores[reference]):
                continue
            rival = max(others, key=others.get)
            p = paired_test(out_dir, test, reference, rival, m, protocol)
            out.append(f"| {m.upper()} | {rival} | {others[rival]:.4f} | {scores[reference]:.4f} | "
                       f"{scores[reference] / others[rival] - 1:+.1%} | {'n/a' if p is None else f'{p:.2g}'} |")
    return "\n".join(out) + "\n"


def compare(models, markets, seeds, protocol="market", scopes=("single", "++"), out_dir=None, config_dict=None,
            pretrained_dir=None, config_file_list=None, test_protocols=None, tuned_dir=None, references=REFERENCES,
            jobs=1):
    """Run (or resume) the grid; returns the output directory.

    Every cell selects on valid under ``protocol`` and is tested under ``protocol`` and each of
    ``test_protocols``; ``table.md``/``plot.png`` show ``protocol``, ``table-<p>.md``/``plot-<p>.png`` the others.
    With ``tuned_dir`` (a folder of searches named by :func:`recbole_cmr.tune.search_name`) every cell also
    reads its search's ``best.yaml`` (except :data:`NOTHING_TO_TUNE`). Each of ``references`` (labels) gets a
    Wilcoxon test against the best other model per market in the tables. ``jobs``: cells run at once, each in its
    own process (``jobs - 1`` helpers beside this one; give each cell one thread, the default ``torch_threads``).
    """
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise CrossMarketError(f"--jobs must be an integer >= 1, got {jobs!r}")
    config_dict = dict(config_dict or {})
    tested = list(dict.fromkeys([protocol, *(test_protocols or [])]))
    tested = [get_protocol(p).name for p in tested]
    tuned_dir = os.path.abspath(tuned_dir) if tuned_dir else None
    cells = plan(models, markets, seeds, protocol, list(scopes), config_file_list, config_dict, tuned_dir)
    out_dir = os.path.abspath(out_dir or os.path.join("saved", f"compare-{protocol}"))
    pretrained_dir = os.path.abspath(pretrained_dir or os.path.join(os.path.dirname(out_dir), "pretrained"))
    for flag, folder in (("--out", out_dir), ("--pretrained_dir", pretrained_dir)):
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise CrossMarketError(f"{flag} {folder} is a file; give a folder (it is created if missing)")
    os.makedirs(out_dir, exist_ok=True)
    results = os.path.join(out_dir, "results.csv")
    rows = read_grid_rows(results)
    if rows and any(r["selected_on"] != protocol for r in rows):
        raise CrossMarketError(f"{results} holds cells selected under another protocol; choose another --out")
    check_grid_settings(out_dir, config_file_list, config_dict, tuned_dir)
    locks = os.path.join(out_dir, ".locks")
    os.makedirs(locks, exist_ok=True)
    with locked(os.path.join(locks, "results.lock")):
        remove_stale_runs(os.path.join(out_dir, "runs"))
    fill = (cells, protocol, tested, config_file_list, config_dict, tuned_dir, out_dir, pretrained_dir, references)
    helpers = [multiprocessing.get_context("spawn").Process(target=_helper, args=(*fill, f" in helper {n}"))
               for n in range(1, jobs)]
    for helper in helpers:
        helper.start()
    try:
        _fill(*fill)
    except BaseException:  # Ctrl-C reaches the helpers too; a SIGTERM or an error in this process stops them here
        for helper in helpers:
            helper.terminate()
        raise
    finally:
        for helper in helpers:
            helper.join()
    failed = sum(helper.exitcode != 0 for helper in helpers)
    if failed:
        raise CrossMarketError(f"{failed} of the grid's {jobs - 1} helper processes failed (their errors are printed "
                               "above); the same command runs their cells again")
    with locked(os.path.join(locks, "results.lock")):
        rows = read_grid_rows(results)
    for cell in cells:
        if not _finished(rows, cell, tested):
            print(f"skipped {cell[0]} on {cell[3].upper()} seed {cell[4]}: another process is running it in "
                  f"{out_dir}; run this command again once it has finished", flush=True)
    return out_dir


def _fill(cells, protocol, tested, config_file_list, config_dict, tuned_dir, out_dir, pretrained_dir, references,
          where=""):
    """Run every cell of the plan that is neither finished nor claimed by another process, in the plan's order;
    ``where`` names the process in its progress lines."""
    locks = os.path.join(out_dir, ".locks")
    results = os.path.join(out_dir, "results.csv")
    for number, cell in enumerate(cells, 1):
        claim = try_lock(os.path.join(locks, _cell_name(cell) + ".lock"))
        if claim is None:
            continue
        try:
            with locked(os.path.join(locks, "results.lock")):
                finished = _finished(read_grid_rows(results), cell, tested)  # another process may have run it
            if finished:
                continue
            print(f"[{number}/{len(cells)}] running {cell[0]} on {cell[3].upper()} seed {cell[4]} (selected on "
                  f"{protocol}, tested on {', '.join(tested)}){where}", flush=True)
            cell_rows = run_cell(cell, protocol, tested, cell_config_files(cell, config_file_list, tuned_dir),
                                 config_dict, out_dir, pretrained_dir)
            with locked(os.path.join(locks, "results.lock")):
                key = _row_key({"label": cell[0], "market": cell[3].lower(), "seed": cell[4]})
                kept = [r for r in read_grid_rows(results) if _row_key(r) != key]  # a partial cell is redone
                rows = kept + cell_rows
                write_csv_rows(results, rows, FIELDS)
                for p in sorted({r["protocol"] for r in rows}):
                    suffix = "" if p == protocol else f"-{p}"
                    write_text(os.path.join(out_dir, f"table{suffix}.md"), markdown(rows, out_dir, p, references))
                    comparison(rows, os.path.join(out_dir, f"plot{suffix}.png"), p)
        finally:
            release(claim)


def _helper(*fill):
    """A helper process of a grid run with ``jobs``: fills cells beside the others; Ctrl-C ends it quietly (the
    grid's own process reports it)."""
    try:
        _fill(*fill)
    except KeyboardInterrupt:
        sys.exit(128 + signal.SIGINT)


def _finished(rows, cell, tested):
    key = _row_key({"label": cell[0], "market": cell[3].lower(), "seed": cell[4]})
    return all(any(_row_key(r) == key and r["protocol"] == p for r in rows) for p in tested)


def _row_key(row):
    return row["label"], row["market"], str(row["seed"])
