"""ACMR speed, PyTorch ops against the fused CPU kernels, side by side in one run on this machine.

    python bench/acmr_speed.py [--market in] [--threads 2] [--full_market ca] [--out bench/results/acmr_speed]

Each path (``fused_kernels: eager`` and ``fused``) runs in its own process, one after the other, so each
has its own peak memory: one pre-training epoch (target ``--market``, every market's training rows),
one fine-tuning epoch, a valid evaluation under each protocol (the metrics of the two paths must agree:
evaluation has no dropout), and the layer stack's GFLOP/s over the pre-training epoch (linear maps and
attention, forward and backward, counted from the shapes the model encoded). The fused path also times
a full-ranking valid evaluation of ``--full_market`` (the largest market). Writes ``<out>.json`` and
``<out>.md`` with the CPU model; run it on an otherwise idle machine.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings

import torch

PATHS = ("eager", "fused")


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return "unknown"


def stack_flops(model, shapes):
    """Forward + backward FLOPs of the transformer layers for the encoded ``(rows, width)`` shapes."""
    d, layers = model.embedding_size, model.n_layers
    per_token = 2 * 12 * d * d  # qkv 3d^2, output d^2, feed-forward 8d^2: multiply-adds x 2
    total = 0
    for rows, width in shapes:
        forward = rows * width * per_token + 4 * rows * width * width * d  # + q k^T and p v
        total += 3 * forward * layers  # backward ~ twice the forward
    return total


def measure(path, market, full_market, threads):
    """One path's timings, in this process."""
    from recbole_cmr.config import make_config, protocol_config
    from recbole_cmr.data.protocol import PROTOCOLS, eval_dataloaders, train_dataloader
    from recbole_cmr.quick_start import CrossMarketRun, RunDirectory
    from recbole_cmr.trainer import get_trainer

    settings = {"checkpoint_dir": tempfile.mkdtemp(), "state": "WARNING", "fused_kernels": path,
                "torch_threads": threads}
    config = make_config("ACMR", market, config_dict=settings)
    run_dir = RunDirectory(config)
    runner = CrossMarketRun(config, run_dir)
    model = runner.model
    trainer = get_trainer(config)(config, model)
    pretrain_data = train_dataloader(config, runner.built[0], runner.built)
    shapes, encode = [], model._encode

    def counting_encode(sequences, markets):
        shapes.append(tuple(sequences.shape))
        return encode(sequences, markets)

    model._encode = counting_encode
    start = time.time()
    trainer._train_epoch(pretrain_data, 0)
    pretrain_s = time.time() - start
    model._encode = encode
    result = {"pretrain_rows_per_epoch": len(pretrain_data.dataset) * 5, "pretrain_batches": len(pretrain_data),
              "pretrain_epoch_s": round(pretrain_s, 1),
              "layer_gflop_per_s": round(stack_flops(model, shapes) / pretrain_s / 1e9, 1)}
    start = time.time()
    trainer._train_epoch(runner._target_train_data(), 1)
    result["finetune_epoch_s"] = round(time.time() - start, 2)
    for protocol in PROTOCOLS:
        valid, _ = eval_dataloaders(protocol_config(config, protocol), runner.dataset, runner.built)
        start = time.time()
        _, metrics = trainer._valid_epoch(valid)
        result[f"valid_eval_{protocol}_s"] = round(time.time() - start, 2)
        result[f"valid_{protocol}_ndcg@10"] = round(float(metrics["ndcg@10"]), 6)
    run_dir.discard()
    if full_market:
        config = make_config("ACMR", full_market, config_dict={**settings, "eval_protocol": "full"})
        run_dir = RunDirectory(config)
        runner = CrossMarketRun(config, run_dir)
        trainer = get_trainer(config)(config, runner.model)
        start = time.time()
        trainer._valid_epoch(runner.valid_data)
        result[f"valid_eval_full_{full_market}_s"] = round(time.time() - start, 1)
        result[f"valid_eval_full_{full_market}_users"] = len(runner.built[1])
        run_dir.discard()
    result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return result


def main(argv=None):
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--market", default="in")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--full_market", default="ca", help="market whose full-ranking evaluation is timed (fused)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                      "acmr_speed"))
    parser.add_argument("--path", choices=PATHS, help=argparse.SUPPRESS)  # one path, in a child process
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # RecBole's Config reads the command line too: keep the bench's own flags from it
    if args.path:
        result = measure(args.path, args.market, args.full_market if args.path == "fused" else None, args.threads)
        with open(args.json, "w") as f:
            json.dump(result, f)
        return 0
    from recbole_cmr.model.acmr_kernels import load_kernels
    from recbole_cmr.utils import write_text

    if load_kernels() is None:
        print("error: the fused kernels cannot be built on this machine; nothing to compare", file=sys.stderr)
        return 2
    results = {}
    for path in PATHS:
        with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
            subprocess.run([sys.executable, __file__, f"--path={path}", f"--json={tmp.name}",
                            f"--market={args.market}", f"--threads={args.threads}",
                            f"--full_market={args.full_market}"], check=True)
            results[path] = json.load(open(tmp.name))
            print(path, results[path], flush=True)
    summary = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(), "cores": os.cpu_count(),
               "threads": args.threads, "market": args.market, "torch": torch.__version__,
               "pretrain_speedup": round(results["eager"]["pretrain_epoch_s"]
                                         / results["fused"]["pretrain_epoch_s"], 2),
               **{path: results[path] for path in PATHS}}
    write_text(args.out + ".json", json.dumps(summary, indent=2))
    keys = list(dict.fromkeys(k for path in PATHS for k in results[path]))
    lines = [f"# ACMR speed: PyTorch ops (eager) vs fused CPU kernels, target {args.market.upper()}\n",
             f"Measured {summary['date']} on {summary['cpu']} ({summary['cores']} cores), {args.threads} torch "
             f"threads, torch {torch.__version__}, one process per path, side by side in one run. "
             f"Pre-training epoch: {summary['pretrain_speedup']}x faster fused. Goal: >= 4x and <= 60 s on an idle "
             "2-core machine, peak RSS <= 2 GiB.\n",
             "| measure | eager | fused |", "|---|---|---|"]
    lines += [f"| {k} | {results['eager'].get(k, '')} | {results['fused'].get(k, '')} |" for k in keys]
    write_text(args.out + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
