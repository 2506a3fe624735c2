"""Train and evaluate a model on the cross-market split.

    python run_recbole_cmr.py --model=ACMR --market=IN
    python run_recbole_cmr.py --model=EASE --market=JP --protocol=full --train_markets=target

Any other ``--key=value`` is a RecBole config override, as with ``run_recbole``; its
key must be one some yaml defines (RecBole's, the plugin's or a ``--config_files``
file), so a typo stops the command instead of becoming a new, unused key.
"""

import argparse
import collections
import difflib
import os
import signal
import sys
import threading
import warnings

try:  # imports torch: a second or two in which Ctrl-C would otherwise print a traceback
    from recbole_cmr.utils import (
        CrossMarketError,
        int_list,
        interrupt_line,
        io_error_line,
        name_list,
        positive_int,
        raise_terminated,
    )
except KeyboardInterrupt:
    print("error: interrupted while starting; nothing was written", file=sys.stderr)
    sys.exit(128 + signal.SIGINT)

#: Flags of one mode only (run, --compare, --tune, --recommend); another mode refuses them. Not ``--k``:
#: it is the list length of --recommend and, in the other modes, ItemKNN's ``k`` (a RecBole config key).
MODE_FLAGS = {
    "run": ("phase", "pretrained", "resume"),
    "compare": ("models", "markets", "seeds", "scopes", "pretrained_dir", "jobs"),
    "tune": ("ray_address",),
    "recommend": ("users", "all_users", "history", "histories", "keep_known"),
}

#: Settings a comparison grid sets per cell, and the flag that sets them.
GRID_KEYS = {"seed": "--seeds", "train_markets": "--scopes", "eval_protocol": "--protocol"}


def parse_args(argv):
    parser = argparse.ArgumentParser(description="recbole-cmr: cross-market recommendation on RecBole",
                                     allow_abbrev=False)  # --seed is a config key, not --seeds
    parser.add_argument("--model", "-m", default="ACMR", help="ACMR or any RecBole model name (default ACMR)")
    parser.add_argument("--market", default=None,
                        help="target market, case-insensitive (default: target_market of the config, IN); "
                        "--recommend: the market of new users")
    parser.add_argument("--dataset", "-d", default=None,
                        help="dataset name under data_path (default: the config files' dataset, else xmarket)")
    parser.add_argument("--protocol", default=None, help="evaluation protocol: market (default), full, paper "
                        "or one registered in recbole_cmr.data.protocol")
    parser.add_argument("--test_protocols", default=None,
                        help="comma list: also test the selected model under these protocols, e.g. paper,market,full")
    parser.add_argument("--config_files", default=None, help="comma separated yaml files")
    parser.add_argument("--phase", default=None, help="two-phase models: both (default), pretrain or finetune")
    parser.add_argument("--pretrained", default=None, help="pretrain.pth to fine-tune from (skips pre-training)")
    parser.add_argument("--resume", default=None, metavar="RUN_DIR.incomplete",
                        help="continue an interrupted run from its last finished epoch (give the same other flags)")
    parser.add_argument("--compare", action="store_true", help="run a comparison grid (--models, --markets, --seeds)")
    parser.add_argument("--models", default=None, help="compare: comma list of models (default ACMR,Pop,EASE)")
    parser.add_argument("--markets", default=None, help="compare: comma list of target markets (default IN,JP)")
    parser.add_argument("--seeds", default=None, help="compare: comma list of seeds (default 2020)")
    parser.add_argument("--scopes", default=None, help="compare: built-ins' training scopes (default single,++)")
    parser.add_argument("--out", default=None, help="compare: output directory (default saved/compare-<protocol>); "
                        "tune: the search folder (an interrupted search in it resumes); "
                        "recommend: a .csv or .json file (default: print)")
    parser.add_argument("--pretrained_dir", default=None,
                        help="compare: folder of reusable pre-trained checkpoints (default: pretrained/ beside --out)")
    parser.add_argument("--jobs", default=None, help="compare: cells run at once, one process and one thread each "
                        "(default 1)")
    parser.add_argument("--tune", default=None, help="run a Ray Tune search described by this yaml (see props/tune/)")
    parser.add_argument("--ray_address", "--ray-address", default=None,
                        help="join this Ray cluster (default: RAY_ADDRESS, else a local Ray instance)")
    parser.add_argument("--recommend", default=None, metavar="RUN_DIR",
                        help="recommend with the model of a finished run (its folder)")
    parser.add_argument("--users", default=None, help="recommend: comma list of the run's users (tokens or raw ids)")
    parser.add_argument("--all_users", action="store_true", help="recommend: every user of the run's target market")
    parser.add_argument("--history", default=None,
                        help="recommend: comma list of a new user's items (in order, oldest first)")
    parser.add_argument("--histories", default=None,
                        help="recommend: a CSV file 'user,item' (header, one row per item) of new users' histories")
    parser.add_argument("--k", default=None, help="recommend: items per user (default 10); other modes: "
                        "ItemKNN's k (neighbours per item)")
    parser.add_argument("--keep_known", action="store_true", help="recommend: keep the user's known items")
    args, unknown = parser.parse_known_args(argv)
    return parser, args, unknown


def config_overrides(parser, unknown, config_files):
    """RecBole's ``--key=value`` overrides among the arguments argparse did not know."""
    from recbole_cmr.config import known_config_keys, typed_overrides

    known = known_config_keys(config_files)
    overrides = {}
    for arg in unknown:
        key, sep, value = arg[2:].partition("=")
        if arg.startswith("--") and sep and key in known:
            if not value.strip():
                raise CrossMarketError(f"--{key} is empty; give it a value (~ for none) or drop it")
            overrides[key] = value
            continue
        if arg.startswith("--") and not sep and key in known:
            raise CrossMarketError(f"write {arg}=VALUE: config overrides take the form --key=value")
        flags = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
        name = "--" + (key or arg).lstrip("-").replace("-", "_")
        close = difflib.get_close_matches(name, flags + [f"--{k}" for k in known], n=3, cutoff=0.75)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise CrossMarketError(
            f"unknown argument {arg!r}.{hint} The options are listed by --help; any other argument must be "
            "--key=value with a RecBole or recbole-cmr config key (several --config_files: separate with commas)."
        )
    for key, flag in (("target_market", "--market"), ("eval_protocol", "--protocol")):
        if key in overrides:
            raise CrossMarketError(f"give the {key.replace('_', ' ')} as {flag}, not --{key}")
    return typed_overrides(overrides)


def check_repeated_flags(parser, argv):
    """A flag given twice is refused: argparse and RecBole would silently keep the last value."""
    dest = {option: action.dest for action in parser._actions for option in action.option_strings}
    seen = {}
    for arg in argv:
        flag = arg.partition("=")[0]
        if not flag.startswith("-") or flag == "-":
            continue
        name = dest.get(flag, flag.lstrip("-"))
        if name in seen:
            raise CrossMarketError(f"{flag} is given twice ({seen[name]} and {arg}); give it once")
        seen[name] = arg


def say(text):
    """Print ``text`` on standard output now; a write that fails there (a full disk behind ``>``) names it."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        raise
    except OSError as err:
        raise OSError(err.errno, err.strerror, "standard output") from None


def quiet_writer_thread_errors(args):
    """The command's ``threading.excepthook``: a full disk may fail TensorBoard's writer thread first; the run meets
    the same OSError at its next TensorBoard write and reports it in one line, so the thread's traceback is not
    printed. Other threads' errors as usual."""
    if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
        return
    threading.__excepthook__(args)


def main(argv=None):
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    argv = sys.argv[1:] if argv is None else argv
    parser, args, unknown = parse_args(argv)
    program_argv, sys.argv = sys.argv, sys.argv[:1]  # overrides go in config_dict; RecBole must not re-read argv
    on_sigterm = signal.signal(signal.SIGTERM, raise_terminated)
    on_thread_error, threading.excepthook = threading.excepthook, quiet_writer_thread_errors
    try:
        check_repeated_flags(parser, argv)
        return _main(parser, args, unknown)
    except CrossMarketError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of the output stopped early (``| head``): stop quietly, as other commands do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 128 + signal.SIGPIPE
    except OSError as err:  # an output folder that is read-only, a file, or on a full disk
        advice = ("free space where standard output goes" if err.filename == "standard output" else
                  "choose a writable folder with free space (--checkpoint_dir, --out) and check the input paths")
        print(io_error_line(err, advice), file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        kept = getattr(err, "kept_run", None)
        if args.recommend:
            where = "nothing was written"
        elif getattr(err, "kept_search", None):
            where = f"the same --tune command resumes the search in {err.kept_search}"
        elif kept and args.compare:
            where = f"the cell's unfinished run is kept in {kept}; the same --compare command continues it"
        elif kept:
            where = f"the unfinished run is kept in {kept}; add --resume={kept} to the same command to continue it"
        else:
            where = "unfinished run folders were removed (a --compare grid resumes where it stopped)"
        line, status = interrupt_line(err, where)
        print(line, file=sys.stderr)
        return status
    finally:
        signal.signal(signal.SIGTERM, on_sigterm)
        threading.excepthook = on_thread_error
        sys.argv = program_argv


def check_mode_flags(args):
    """The mode the flags ask for; a flag of another mode is an error, not silently ignored."""
    modes = [m for m, on in (("compare", args.compare), ("tune", args.tune), ("recommend", args.recommend)) if on]
    if len(modes) > 1:
        raise CrossMarketError(f"--{modes[0]} and --{modes[1]} are separate modes; run them one at a time")
    mode = modes[0] if modes else "run"
    if mode == "compare" and args.market:
        raise CrossMarketError("--compare takes its target markets as --markets (a comma list), not --market")
    for other, flags in MODE_FLAGS.items():
        given = [f for f in flags if getattr(args, f) not in (None, False)]
        if other != mode and given:
            where = "a plain run" if other == "run" else f"--{other}"
            raise CrossMarketError(f"--{given[0]} is for {where}, not for "
                                   f"{'a plain run' if mode == 'run' else '--' + mode}; drop it")
    return mode


def _recommend(args):
    from recbole_cmr.recommend import load_run, read_histories, recommend, recommend_histories, write_recommendations

    sources = [flag for flag in ("users", "all_users", "history", "histories") if getattr(args, flag)]
    if not sources:
        raise CrossMarketError("--recommend needs the users: give --users, --all_users, --history or --histories")
    if len(sources) > 1:
        raise CrossMarketError(f"give one of --users, --all_users, --history, --histories (got --{sources[0]} and "
                               f"--{sources[1]})")
    k = positive_int(args.k or "10", "--k")
    if args.out and not args.out.lower().endswith((".csv", ".json")):
        raise CrossMarketError(f"--out must end in .csv or .json, got {args.out!r}")
    histories = None
    if args.history:
        histories = {"new_user": name_list(args.history, "--history")}
    elif args.histories:
        histories = read_histories(args.histories)
    loaded = load_run(args.recommend)
    if histories is not None:
        rows = recommend_histories(loaded, histories, args.market, k, args.keep_known)
    else:
        if args.market:
            raise CrossMarketError("--market is for new users' histories; known users belong to the run's market")
        users = None if args.all_users else name_list(args.users, "--users")
        rows = recommend(loaded, users, k, args.keep_known)
    per_user = collections.Counter(r["user"] for r in rows)
    short = sorted(n for n in per_user.values() if n < k)
    if short:  # said, not silent: a market has fewer unseen candidates than asked for
        counts = f"{short[0]} each" if short[0] == short[-1] else f"{short[0]} to {short[-1]}"
        print(f"note: {len(short)} of {len(per_user)} user(s) got fewer than --k={k} items ({counts}): that is "
              "every candidate of their market "
              f"{'' if args.keep_known else 'they do not already have '}(items sold there)", file=sys.stderr)
    if args.out:
        write_recommendations(args.out, rows)
        say(f"{len(rows)} recommendations written to {args.out}")
    else:
        say("\n".join(["user\trank\titem\tscore",
                        *(f"{r['user']}\t{r['rank']}\t{r['item']}\t{r['score']:.6f}" for r in rows)]))
    return 0


def _main(parser, args, unknown):
    empty = [a.option_strings[0] for a in parser._actions
             if isinstance(getattr(args, a.dest, None), str) and not getattr(args, a.dest).strip()]
    if empty:
        raise CrossMarketError(f"{empty[0]} is empty; give it a value or drop it (--help lists the defaults)")
    mode = check_mode_flags(args)
    if mode != "recommend" and args.k is not None:
        unknown = [*unknown, f"--k={args.k}"]
    if mode == "recommend":
        if unknown:
            raise CrossMarketError(f"--recommend uses the run's own config; drop {unknown[0]!r}")
        return _recommend(args)
    from recbole_cmr.config import check_overrides_fit
    from recbole_cmr.quick_start import format_table, run
    from recbole_cmr.tune import tune_model

    files = args.config_files.replace(",", " ").split() if args.config_files else None
    overrides = config_overrides(parser, unknown, files)
    config_dict = {**overrides, **({"dataset": args.dataset} if args.dataset else {})}
    models = name_list(args.models or "ACMR,Pop,EASE", "--models") if args.compare else [args.model]
    check_overrides_fit(overrides, models, files)
    tests = [p.lower() for p in name_list(args.test_protocols, "--test_protocols")] if args.test_protocols else None
    repeated = sorted({p for p in tests or [] if tests.count(p) > 1})
    if repeated:
        raise CrossMarketError(f"--test_protocols lists {repeated[0]!r} more than once; give each protocol once")
    if args.compare:
        from recbole_cmr.compare import compare

        grid_set = [f"--{key} (use {flag})" for key, flag in GRID_KEYS.items() if key in overrides]
        if grid_set:
            raise CrossMarketError(f"--compare sets {', '.join(grid_set)} per cell; drop the override")
        out = compare(models, name_list(args.markets or "IN,JP", "--markets"),
                      int_list(args.seeds or "2020", "--seeds"), (args.protocol or "market").lower(),
                      name_list(args.scopes or "single,++", "--scopes"), args.out,
                      config_dict, args.pretrained_dir, files, tests, jobs=positive_int(args.jobs or "1", "--jobs"))
        say(open(f"{out}/table.md").read())
        say(f"comparison directory: {out}")
        return 0
    if args.protocol is not None:
        config_dict["eval_protocol"] = args.protocol.lower()
    if args.tune:
        out = tune_model(args.model, args.market, args.tune, files, config_dict, ray_address=args.ray_address,
                         out_dir=args.out)
        say(open(f"{out}/summary.md").read())
        say(f"search directory: {out}")
        return 0
    path, rows = run(args.model, args.market, files, config_dict, phase=args.phase or "both",
                     pretrained=args.pretrained, test_protocols=tests, resume=args.resume)
    say(format_table(rows))
    say(f"run directory: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
