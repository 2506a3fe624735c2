"""The tuned comparison: a Ray Tune search per model, scope and market, each selection rerun on three seeds.

Every search has the same budget; the selected configurations are tested under every protocol.

    python bench/tune_markets.py --markets IN,JP,DE                       # the searches (resumable)
    python bench/tune_markets.py --markets IN,JP,DE --rerun --seeds 2020,2021,2022

Budget, the same for every model: the model's yaml defaults (never stopped early) and the 20 seeded samples of
its search file in ``props/tune/`` (random search), ASHA
on valid NDCG@5 under ``market`` with a grace period of one pass over all markets' training rows for trained
models (closed-form ones fit once), one CPU and one torch thread per trial, two trials at a time on a 2-core
machine, and the grid's epoch cap (50 per phase) and patience (5). EASE and ItemKNN are searched in both
scopes; for the other built-ins the scope (``train_markets``: target or all) is a searched parameter;
cross-market models train as their yaml says. Each search lands in
``bench/results/tune/<model>-<scope>-<market>/`` (trials, per-epoch scores, ``best.yaml``, its wall and CPU
minutes); a search that is interrupted resumes when the command is run again (in a clean clone too, once its
folder is committed), a finished one is skipped.
``--rerun`` runs the grid of the selected configurations, with Pop (nothing to tune) beside them, into
``bench/results/compare-tuned/`` with ``compare_markets.py``'s table.
"""

import argparse
import glob
import json
import os
import sys
import time
import warnings

import yaml
from compare_markets import bench_command, market_list, summary

from recbole_cmr.compare import NOTHING_TO_TUNE, REFERENCES, compare
from recbole_cmr.model.abstract_recommender import CrossMarketModel
from recbole_cmr.tune import search_name, tune_model
from recbole_cmr.utils import (
    CrossMarketError,
    get_model,
    int_list,
    name_list,
    positive_int,
    read_csv_rows,
    write_text,
)

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
MODELS = "ItemKNN,EASE,M3Rec,BPR,MANeuMF,FOREC,LightGCN,SASRec,ACMR,CMRanker,MMoE,CrossStitch,CoNet,DDTCDR"
#: Built-ins searched in each scope; the others search their scope as a parameter.
BOTH_SCOPES = ("EASE", "ItemKNN")
SETTINGS = {"epochs": 50, "stopping_step": 5}


def search_file(model):
    return os.path.join(REPO, "props", "tune", f"{model.lower()}.yaml")


def searchable_models():
    """The models with a search file: ``props/tune/<model in lower case>.yaml`` whose ``model`` is that model."""
    models = []
    for path in sorted(glob.glob(os.path.join(REPO, "props", "tune", "*.yaml"))):
        with open(path) as f:
            model = str((yaml.safe_load(f) or {}).get("model"))
        if search_file(model) == path:
            models.append(model)
    return models


def check_arguments(args):
    """(models, markets, seeds, jobs) of the command, each checked before the first search: a bad one would otherwise
    stop the command hours in, or fail every trial of its searches."""
    models = name_list(args.models, "--models")
    tunable = searchable_models()
    for model in models:
        if model not in tunable:
            why = ("has nothing to tune (--rerun runs it beside the tuned models)" if model in NOTHING_TO_TUNE
                   else "has no search file in props/tune/ (model names are case-sensitive)")
            raise CrossMarketError(f"--models: {model} {why}; models with a search file: {', '.join(tunable)}")
    if args.seeds is not None and not args.rerun:
        raise CrossMarketError("--seeds is for --rerun; drop it, or add --rerun to test the selected settings")
    seeds = int_list(args.seeds or "2020,2021,2022", "--seeds") if args.rerun else None
    if args.jobs is not None and not args.rerun:
        raise CrossMarketError("--jobs is for --rerun (a search runs two trials at once); drop it")
    jobs = positive_int(args.jobs or "1", "--jobs")
    return models, market_list(args.markets), seeds, jobs


def searches(models, markets):
    """(model, scope, market, config overrides) of every search, cheapest models first."""
    out = []
    for model in models:
        with open(search_file(model)) as f:
            space = yaml.safe_load(f)["space"]
        if issubclass(get_model(model), CrossMarketModel):
            scopes = {"cross-market": {}}
        elif "train_markets" in space:
            scopes = {"searched": {}}
        elif model in BOTH_SCOPES:
            scopes = {"single": {"train_markets": "target"}, "++": {"train_markets": "all"}}
        else:
            raise CrossMarketError(f"{search_file(model)}: search train_markets, or list {model} in BOTH_SCOPES")
        out += [(model, scope, market, overrides) for market in markets for scope, overrides in scopes.items()]
    return out


def cost_table(results):
    """Per search: the selected valid score, trials stopped, wall and CPU minutes; markdown."""
    lines = ["# Searches: selected configuration and cost\n",
             "Valid NDCG@5 (`market` protocol) of the selected trial; search minutes on this machine "
             "(wall; trials' wall minutes times their CPUs; CPU minutes the trials' processes used, which other "
             "work on the machine does not inflate).\n",
             "| search | trials | stopped by ASHA | valid NDCG@5 | defaults' valid | wall min | trial min x CPUs "
             "| trial CPU min | selected |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in sorted(os.listdir(results)):
        best = os.path.join(results, name, "best_test.json")
        if not os.path.exists(best):
            continue
        with open(best) as f:
            info = json.load(f)
        valid = read_csv_rows(os.path.join(results, name, "trials.csv"))[0]["valid_score"]  # selected trial first
        # a best_test.json without trial_wall_cpu_s holds wall x CPUs in trial_cpu_s (no CPU time measured)
        wall_cpu = info.get("trial_wall_cpu_s", info["trial_cpu_s"])
        used = f"{info['trial_cpu_s'] / 60:.1f}" if "trial_wall_cpu_s" in info else "n/a"
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in info["best_params"].items())
        # searches run before the defaults' trial have no defaults_valid
        defaults = f"{info['defaults_valid']:.4f}" if "defaults_valid" in info else "not a trial"
        lines.append(f"| {name} | {info['trials']} | {info['stopped_early']} | {float(valid):.4f} | {defaults} | "
                     f"{info['search_wall_s'] / 60:.1f} | {wall_cpu / 60:.1f} | "
                     f"{used} | {params} |")
    path = os.path.join(results, "searches.md")
    write_text(path, "\n".join(lines) + "\n")
    return path


def main(argv=None):
    """The command; a bad argument is one ``error:`` line and exit code 2, Ctrl-C one line and 130 (the same command
    continues)."""
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markets", default="IN,JP,DE")
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--rerun", action="store_true", help="rerun the selected configurations on --seeds")
    parser.add_argument("--seeds", default=None, help="--rerun: comma list of seeds (default 2020,2021,2022)")
    parser.add_argument("--results", default=os.path.join(BENCH, "results"))
    parser.add_argument("--jobs", default=None, help="--rerun: cells run at once, one process and one thread each")
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # RecBole's Config reads the command line too
    return bench_command(_main, args, interrupted)


def interrupted(err):
    """What the same command does after Ctrl-C: resume the search it interrupted, or go on from the finished ones."""
    search = getattr(err, "kept_search", None)
    return f"resumes the search in {search}" if search else "continues from the finished searches and cells"


def _main(args):
    models, markets, seeds, jobs = check_arguments(args)
    tuned = os.path.join(args.results, "tune")
    if args.rerun:
        groups = {"Pop": ["single", "++"]}  # compare gives one list of scopes to all its built-ins: one call per list
        for model, scope, _, _ in searches(models, markets[:1]):
            groups.setdefault(model, []).append("searched" if scope == "cross-market" else scope)
        models = ["Pop", *models]  # nothing to tune, beside every tuned model as in every table
        for market in markets:
            started = time.time()
            for scopes in dict.fromkeys(tuple(s) for s in groups.values()):
                out = compare([m for m in models if tuple(groups[m]) == scopes], [market],
                              seeds, "market", list(scopes),
                              os.path.join(args.results, "compare-tuned"), {"dataset": "xmarket", **SETTINGS},
                              os.path.join(BENCH, "work", "pretrained"), test_protocols=["full", "paper"],
                              tuned_dir=tuned, references=REFERENCES, jobs=jobs)
            print(f"{market}: {time.time() - started:.0f} s -> {summary(out)}", flush=True)
        return 0
    for model, scope, market, overrides in searches(models, markets):
        out = os.path.join(tuned, search_name(model, scope, market))
        if os.path.exists(os.path.join(out, "summary.md")):
            continue
        print(f"searching {model} ({scope}) on {market.upper()}", flush=True)
        tune_model(model, market, search_file(model), config_dict={"dataset": "xmarket", **SETTINGS, **overrides},
                   out_dir=out, test_best=False)
        print(f"  -> {cost_table(tuned)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
