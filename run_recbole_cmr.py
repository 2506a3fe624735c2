"""Train and evaluate a model on the cross-market split.

    python run_recbole_cmr.py --model=ACMR --market=IN
    python run_recbole_cmr.py --model=EASE --market=JP --protocol=full --train_markets=target

Any other ``--key=value`` is a RecBole config override, as with ``run_recbole``; its
key must be one some yaml defines (RecBole's, the plugin's or a ``--config_files``
file), so a typo stops the command instead of becoming a new, unused key.
"""

import argparse
import difflib
import sys
import warnings

from recbole_cmr.utils import CrossMarketError

#: Settings a comparison grid sets per cell, and the flag that sets them.
GRID_KEYS = {"seed": "--seeds", "train_markets": "--scopes", "eval_protocol": "--protocol"}


def parse_args(argv):
    parser = argparse.ArgumentParser(description="recbole-cmr: cross-market recommendation on RecBole",
                                     allow_abbrev=False)  # --seed is a config key, not --seeds
    parser.add_argument("--model", "-m", default="ACMR", help="ACMR or any RecBole model name (default ACMR)")
    parser.add_argument("--market", default="in", help="target market, case-insensitive (default IN)")
    parser.add_argument("--dataset", "-d", default="xmarket", help="dataset name under data_path (default xmarket)")
    parser.add_argument("--protocol", default=None, help="evaluation protocol: paper, market (default) or full")
    parser.add_argument("--test_protocols", default=None,
                        help="comma list: also test the selected model under these protocols, e.g. paper,market,full")
    parser.add_argument("--config_files", default=None, help="comma separated yaml files")
    parser.add_argument("--phase", default="both", help="two-phase models: both (default), pretrain or finetune")
    parser.add_argument("--pretrained", default=None, help="pretrain.pth to fine-tune from (skips pre-training)")
    parser.add_argument("--compare", action="store_true", help="run a comparison grid (--models, --markets, --seeds)")
    parser.add_argument("--models", default="ACMR,Pop,EASE", help="compare: comma list of models")
    parser.add_argument("--markets", default="IN,JP", help="compare: comma list of target markets")
    parser.add_argument("--seeds", default="2020", help="compare: comma list of seeds")
    parser.add_argument("--scopes", default="single,++", help="compare: built-ins' training scopes (single, ++)")
    parser.add_argument("--out", default=None, help="compare: output directory (default saved/compare-<protocol>); "
                        "tune: the search folder (an interrupted search in it resumes)")
    parser.add_argument("--pretrained_dir", default=None,
                        help="compare: folder of reusable pre-trained checkpoints (default: pretrained/ beside --out)")
    parser.add_argument("--tune", default=None, help="run a Ray Tune search described by this yaml (see props/tune/)")
    parser.add_argument("--ray_address", "--ray-address", default=None,
                        help="join this Ray cluster (default: RAY_ADDRESS, else a local Ray instance)")
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
            overrides[key] = value
            continue
        flags = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
        name = "--" + (key or arg).lstrip("-").replace("-", "_")
        close = difflib.get_close_matches(name, flags + [f"--{k}" for k in known], n=3, cutoff=0.75)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise CrossMarketError(
            f"unknown argument {arg!r}.{hint} The options are listed by --help; any other argument must be "
            "--key=value with a RecBole or recbole-cmr config key (several --config_files: separate with commas)."
        )
    if "target_market" in overrides:
        raise CrossMarketError("give the target market as --market, not --target_market")
    return typed_overrides(overrides)


def int_list(text, flag):
    """``"1,2,3"`` -> ``[1, 2, 3]``, or say which flag is malformed."""
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise CrossMarketError(f"{flag} must be comma separated integers, got {text!r}") from None


def main(argv=None):
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    parser, args, unknown = parse_args(sys.argv[1:] if argv is None else argv)
    program_argv, sys.argv = sys.argv, sys.argv[:1]  # overrides go in config_dict; RecBole must not re-read argv
    try:
        return _main(parser, args, unknown)
    except CrossMarketError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # an output folder that is read-only, a file, or on a full disk
        where = f" {err.filename}" if err.filename else ""
        print(f"error: cannot write or read{where}: {err.strerror or err}; choose a writable folder with free "
              "space (--checkpoint_dir, --out) and check the input paths", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; unfinished run folders were removed (a --compare grid resumes where it stopped)",
              file=sys.stderr)
        return 130
    finally:
        sys.argv = program_argv


def _main(parser, args, unknown):
    from recbole_cmr.quick_start import format_table, run
    from recbole_cmr.tune import tune_model

    files = args.config_files.replace(",", " ").split() if args.config_files else None
    overrides = config_overrides(parser, unknown, files)
    config_dict = {**overrides, "dataset": args.dataset}
    tests = [p.strip().lower() for p in args.test_protocols.split(",")] if args.test_protocols else None
    if args.compare:
        from recbole_cmr.compare import compare

        grid_set = [f"--{key} (use {flag})" for key, flag in GRID_KEYS.items() if key in overrides]
        if grid_set:
            raise CrossMarketError(f"--compare sets {', '.join(grid_set)} per cell; drop the override")
        out = compare(args.models.split(","), args.markets.split(","), int_list(args.seeds, "--seeds"),
                      (args.protocol or "market").lower(), args.scopes.split(","), args.out,
                      config_dict, args.pretrained_dir, files, tests)
        print(open(f"{out}/table.md").read())
        print(f"comparison directory: {out}")
        return 0
    if args.protocol is not None:
        config_dict["eval_protocol"] = args.protocol.lower()
    if args.tune:
        out = tune_model(args.model, args.market, args.tune, files, config_dict, ray_address=args.ray_address,
                         out_dir=args.out)
        print(open(f"{out}/summary.md").read())
        print(f"search directory: {out}")
        return 0
    path, rows = run(args.model, args.market, files, config_dict, phase=args.phase,
                     pretrained=args.pretrained, test_protocols=tests)
    print(format_table(rows))
    print(f"run directory: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
