"""ACMR speed on this machine: seconds per pre-training epoch, fine-tuning epoch and full evaluation, peak memory.

    python bench/acmr_speed.py [--market in] [--out bench/results/acmr_speed]

Writes ``<out>.json`` and ``<out>.md``.
"""

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
import warnings

import torch

from recbole_cmr.data.protocol import eval_dataloaders, train_dataloader
from recbole_cmr.quick_start import CrossMarketRun, RunDirectory, make_config, protocol_config
from recbole_cmr.trainer import get_trainer


def timed(fn):
    start = time.time()
    fn()
    return round(time.time() - start, 2)


def main(argv=None):
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--market", default="in")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "acmr_speed"))
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # RecBole's Config reads the command line too: keep the bench's own flags from it
    config = make_config("ACMR", args.market, config_dict={"checkpoint_dir": tempfile.mkdtemp(),
                                                           "state": "WARNING", "eval_protocol": "paper"})
    run_dir = RunDirectory(config)
    runner = CrossMarketRun(config, run_dir)
    trainer = get_trainer(config)(config, runner.model)
    pretrain_data = train_dataloader(config, runner.built[0], runner.built)
    finetune_data = runner._target_train_data()
    result = {
        "market": args.market, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "pretrain_rows_per_epoch": len(pretrain_data.dataset) * 5, "pretrain_batches": len(pretrain_data),
        "pretrain_epoch_s": timed(lambda: trainer._train_epoch(pretrain_data, 0)),
        "finetune_epoch_s": timed(lambda: trainer._train_epoch(finetune_data, 1)),
    }
    for protocol in ("paper", "market", "full"):
        valid, _ = eval_dataloaders(protocol_config(config, protocol), runner.dataset, runner.built)
        result[f"valid_eval_{protocol}_s"] = timed(lambda: trainer._valid_epoch(valid))
    result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    run_dir.discard()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=2)
    with open(args.out + ".md", "w") as f:
        f.write(f"# ACMR speed, target {args.market.upper()} (measured {time.strftime('%Y-%m-%d')})\n\n")
        f.write("Goal: one pre-training epoch <= 120 s, peak RSS <= 2 GiB. "
                "Released code: 23-42 min per pre-training epoch, 3.2-3.4 GiB.\n\n")
        f.write("| measure | value |\n|---|---|\n")
        f.write("".join(f"| {k} | {v} |\n" for k, v in result.items()))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
