"""Train and evaluate a model on the cross-market split.

    python run_recbole_cmr.py --model=ACMR --market=IN
    python run_recbole_cmr.py --model=EASE --market=JP --protocol=full --train_markets=target

Any other ``--key=value`` is a RecBole config override, as with ``run_recbole``.
"""

import argparse
import sys
import warnings

from recbole_cmr.utils import CrossMarketError


def parse_args(argv):
    parser = argparse.ArgumentParser(description="recbole-cmr: cross-market recommendation on RecBole")
    parser.add_argument("--model", "-m", default="ACMR", help="ACMR or any RecBole model name (default ACMR)")
    parser.add_argument("--market", default="in", help="target market, case-insensitive (default IN)")
    parser.add_argument("--dataset", "-d", default="xmarket", help="dataset name under data_path (default xmarket)")
    parser.add_argument("--protocol", default=None, help="evaluation protocol: paper, market (default) or full")
    parser.add_argument("--test_protocols", default=None,
                        help="comma list: also test the selected model under these protocols, e.g. paper,market,full")
    parser.add_argument("--config_files", default=None, help="space or comma separated yaml files")
    parser.add_argument("--phase", default="both", help="two-phase models: both (default), pretrain or finetune")
    parser.add_argument("--pretrained", default=None, help="pretrain.pth to fine-tune from (skips pre-training)")
    parser.add_argument("--compare", action="store_true", help="run a comparison grid (--models, --markets, --seeds)")
    parser.add_argument("--models", default="ACMR,Pop,EASE", help="compare: comma list of models")
    parser.add_argument("--markets", default="IN,JP", help="compare: comma list of target markets")
    parser.add_argument("--seeds", default="2020", help="compare: comma list of seeds")
    parser.add_argument("--scopes", default="single,++", help="compare: built-ins' training scopes (single, ++)")
    parser.add_argument("--out", default=None, help="compare: output directory (default saved/compare-<protocol>)")
    parser.add_argument("--pretrained_dir", default=None,
                        help="compare: folder of reusable pre-trained checkpoints (default: pretrained/ beside --out)")
    parser.add_argument("--tune", default=None, help="run a Ray Tune search described by this yaml (see props/tune/)")
    parser.add_argument("--ray_address", "--ray-address", default=None,
                        help="join this Ray cluster (default: RAY_ADDRESS, else a local Ray instance)")
    args, unknown = parser.parse_known_args(argv)
    return args, unknown


def main(argv=None):
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    args, _ = parse_args(sys.argv[1:] if argv is None else argv)
    from recbole_cmr.quick_start import format_table, run
    from recbole_cmr.tune import tune_model

    config_dict = {"dataset": args.dataset}
    if args.protocol is not None:
        config_dict["eval_protocol"] = args.protocol.lower()
    files = args.config_files.replace(",", " ").split() if args.config_files else None
    tests = [p.strip().lower() for p in args.test_protocols.split(",")] if args.test_protocols else None
    try:
        if args.compare:
            from recbole_cmr.compare import compare

            out = compare(args.models.split(","), args.markets.split(","), [int(x) for x in args.seeds.split(",")],
                          (args.protocol or "market").lower(), args.scopes.split(","), args.out,
                          {"dataset": args.dataset}, args.pretrained_dir, files, tests)
            print(open(f"{out}/table.md").read())
            print(f"comparison directory: {out}")
            return 0
        if args.tune:
            out = tune_model(args.model, args.market, args.tune, files, config_dict, ray_address=args.ray_address)
            print(open(f"{out}/summary.md").read())
            print(f"search directory: {out}")
            return 0
        path, rows = run(args.model, args.market, files, config_dict, phase=args.phase,
                      pretrained=args.pretrained, test_protocols=tests)
    except CrossMarketError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(rows))
    print(f"run directory: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
