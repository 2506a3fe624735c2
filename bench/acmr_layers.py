"""ACMR's transformer stack against PyTorch's own, on one training batch: where the epoch time floor is.

    python bench/acmr_layers.py [--out bench/results/acmr_layers]

Times L=4 layers (d=32, H=8, FFN 128, dropout 0.3) on 1024 rows at width n = 13
(about the mean padded width of a length-bucketed pre-training batch) and n = 51
(the widest): ACMR's ``TransformerLayer`` forward + backward on PyTorch's ops and on the
fused CPU kernels, on PyTorch's ops under bf16 autocast where the CPU computes bf16 natively
(AMX or AVX512-BF16; "n/a" elsewhere), and ``torch.nn.TransformerEncoder`` forward + backward,
forward alone in train mode and forward in eval mode without gradients. Best of three, after one warm-up run.
Writes ``<out>.json`` and ``<out>.md``.
"""

import argparse
import json
import os
import sys
import time

import torch

from recbole_cmr.model.acmr import TransformerLayer
from recbole_cmr.model.acmr_kernels import cpu_flags, fused_layer_forward
from recbole_cmr.utils import write_text

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from acmr_speed import cpu_model  # noqa: E402

ROWS, D, HEADS, LAYERS, DROPOUT = 1024, 32, 8, 4, 0.3
NATIVE_BF16 = bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def best_ms(fn, repeats=3):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(1000 * min(times), 1)


def measure(width):
    torch.manual_seed(0)
    ours = torch.nn.ModuleList(TransformerLayer(D, HEADS, DROPOUT) for _ in range(LAYERS))
    torch_layer = torch.nn.TransformerEncoderLayer(D, HEADS, 4 * D, DROPOUT, batch_first=True)
    theirs = torch.nn.TransformerEncoder(torch_layer, LAYERS, enable_nested_tensor=False)
    x = torch.randn(ROWS, width, D, requires_grad=True)
    bias = torch.zeros(ROWS, 1, 1, width)
    padding = torch.zeros(ROWS, width, dtype=torch.bool)

    def ours_train():
        h = x
        for layer in ours:
            h = layer(h, bias)
        h[:, 0].sum().backward()

    lengths = torch.full((ROWS,), width)

    def fused_train():
        h = x
        for layer in ours:
            h = fused_layer_forward(layer, h, lengths)
        h[:, 0].sum().backward()

    def bf16_train():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = x
            for layer in ours:
                h = layer(h, bias)
            h[:, 0].float().sum().backward()

    def theirs_forward():
        return theirs(x, src_key_padding_mask=padding)

    def theirs_eval():
        theirs.eval()
        with torch.no_grad():
            theirs_forward()
        theirs.train()

    return {
        "acmr_fwd_bwd_ms": best_ms(ours_train),
        "acmr_fused_fwd_bwd_ms": best_ms(fused_train),
        "acmr_bf16_autocast_fwd_bwd_ms": best_ms(bf16_train) if NATIVE_BF16 else "n/a",
        "torch_fwd_bwd_ms": best_ms(lambda: theirs_forward()[:, 0].sum().backward()),
        "torch_fwd_train_ms": best_ms(theirs_forward),
        "torch_fwd_eval_no_grad_ms": best_ms(theirs_eval),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "acmr_layers"))
    args = parser.parse_args(argv)
    result = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "rows": ROWS,
              "widths": {str(width): measure(width) for width in (13, 51)}}
    write_text(args.out + ".json", json.dumps(result, indent=2))
    lines = [f"# ACMR layers vs torch.nn.TransformerEncoder (measured {time.strftime('%Y-%m-%d')})\n",
             f"{LAYERS} layers, d={D}, H={HEADS}, dropout {DROPOUT}, {ROWS} rows, {result['threads']} threads, "
             f"{result['cpu']}; milliseconds per batch, best of 3.\n",
             "| width n | ACMR fwd+bwd (PyTorch ops) | ACMR fwd+bwd (fused kernels) | ACMR fwd+bwd (PyTorch ops, "
             "bf16 autocast) | torch fwd+bwd | torch fwd (train) | torch fwd (eval, no grad) |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {width} | {r['acmr_fwd_bwd_ms']} | {r['acmr_fused_fwd_bwd_ms']} | "
              f"{r['acmr_bf16_autocast_fwd_bwd_ms']} | {r['torch_fwd_bwd_ms']} | "
              f"{r['torch_fwd_train_ms']} | {r['torch_fwd_eval_no_grad_ms']} |"
              for width, r in result["widths"].items()]
    write_text(args.out + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
