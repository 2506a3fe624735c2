"""Where an ACMR pre-training step spends its time (fused kernels, target IN), and what padding costs.

    python bench/acmr_step_profile.py [--batches 120] [--threads 2]

Times, per batch and averaged over ``--batches`` batches after 10 warm-up ones: the data loader, the
history sampling, forward, backward and the optimiser step, once with RecBole's Adam and once with
PyTorch's fused CPU Adam (same update rule, fused over all parameters); the five most expensive ops by
PyTorch's profiler; and the share of padded positions in the encoded batches. Writes
``bench/results/acmr_step_profile.md``. Run it alone on the machine.
"""

import argparse
import os
import sys
import tempfile
import time
import warnings

import torch

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def setup(threads):
    from recbole_cmr.config import make_config
    from recbole_cmr.data.protocol import train_dataloader
    from recbole_cmr.quick_start import CrossMarketRun, RunDirectory
    from recbole_cmr.trainer import get_trainer

    config = make_config("ACMR", "in", config_dict={"checkpoint_dir": tempfile.mkdtemp(), "state": "WARNING",
                                                    "torch_threads": threads, "fused_kernels": "fused"})
    runner = CrossMarketRun(config, RunDirectory(config))
    model = runner.model
    model.train()
    trainer = get_trainer(config)(config, model)
    return config, model, trainer, train_dataloader(config, runner.built[0], runner.built)


def time_steps(model, optimizer, batches, n):
    """Milliseconds per batch of each part of a step, after 10 warm-up batches."""
    parts = dict.fromkeys(("loader", "histories", "forward", "backward", "optimizer"), 0.0)
    sample_histories = model._histories

    def timed_histories(*args, **kwargs):
        start = time.perf_counter()
        out = sample_histories(*args, **kwargs)
        parts["histories"] += time.perf_counter() - start
        return out

    model._histories = timed_histories
    for i in range(n + 10):
        if i == 10:
            parts = dict.fromkeys(parts, 0.0)
        t0 = time.perf_counter()
        batch = next(batches)
        t1 = time.perf_counter()
        loss = model.calculate_loss(batch)
        t2 = time.perf_counter()
        optimizer.zero_grad()
        loss.backward()
        t3 = time.perf_counter()
        optimizer.step()
        t4 = time.perf_counter()
        for part, seconds in zip(("loader", "forward", "backward", "optimizer"), (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            parts[part] += seconds
    model._histories = sample_histories
    parts["forward"] -= parts["histories"]  # histories are sampled inside the forward pass
    return {part: 1000 * seconds / n for part, seconds in parts.items()}


def padding_share(model, batches, n):
    shapes, encode = [], model._encode

    def counting(sequences, markets):
        shapes.append((sequences.numel(), int((sequences > 0).sum())))
        return encode(sequences, markets)

    model._encode = counting
    with torch.no_grad():
        for _ in range(n):
            model.calculate_loss(next(batches))
    model._encode = encode
    return 1 - sum(real for _, real in shapes) / sum(total for total, _ in shapes)


def main(argv=None):
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=120)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]
    from acmr_speed import cpu_model

    config, model, trainer, data = setup(args.threads)
    batches = iter(data)
    recbole_adam = trainer.optimizer
    fused_adam = torch.optim.Adam(model.parameters(), lr=config["learning_rate"],
                                  weight_decay=config["weight_decay"], fused=True)
    rows = {"RecBole's Adam": time_steps(model, recbole_adam, batches, args.batches),
            "fused Adam": time_steps(model, fused_adam, batches, args.batches)}
    from torch.profiler import profile

    with profile() as prof:
        for _ in range(30):
            loss = model.calculate_loss(next(batches))
            recbole_adam.zero_grad()
            loss.backward()
            recbole_adam.step()
    top = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:5]
    padded = padding_share(model, batches, 100)
    lines = [f"# ACMR pre-training step, target IN, fused kernels, {args.threads} torch threads, {cpu_model()}\n",
             f"Milliseconds per batch (mean of {args.batches} batches of about 1,020 rows after 10 warm-up).\n",
             "| optimiser | loader | histories | forward | backward | optimizer | total |",
             "|---|---|---|---|---|---|---|"]
    for name, parts in rows.items():
        cells = " | ".join(f"{v:.1f}" for v in parts.values())
        lines.append(f"| {name} | {cells} | {sum(parts.values()):.1f} |")
    lines += ["", "Most expensive ops over 30 steps (PyTorch profiler, self CPU time per step):", "",
              "| op | ms per step | calls per step |", "|---|---|---|"]
    lines += [f"| {e.key} | {e.self_cpu_time_total / 30 / 1000:.1f} | {e.count / 30:.0f} |" for e in top]
    lines += ["", f"Padded positions in the encoded batches: {100 * padded:.1f}%.", ""]
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "acmr_step_profile.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
