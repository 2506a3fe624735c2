"""ACMR's transformer layer on fused CPU kernels (``acmr_kernels.cpp``), with PyTorch's ops as the reference.

The kernels are compiled on first use with ``torch.utils.cpp_extension`` (g++ and ninja; a minute
once per machine, cached in torch's extension folder). Where they cannot be built,
``fused_kernels: auto`` falls back to the PyTorch layer with one warning.

Same layer, same parameters, same loss: the linear maps stay PyTorch GEMMs; the attention
core, dropout + residual + LayerNorm and ReLU + dropout run as single passes. Their dropout masks
come from a counter-based hash of a seed drawn from torch's generator (so runs stay seeded and
``torch.utils.checkpoint`` replays them), not from torch's mask stream: the fused and the PyTorch
path draw different masks of the same distribution, and agree exactly without dropout.
"""

import contextlib
import fcntl
import logging
import os
import platform

import torch
from torch.nn import functional as F

KERNEL_MODES = ("auto", "fused", "eager")
_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "acmr_kernels.cpp")
_loaded = {}


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return set(next(line for line in f if line.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        return set()


@contextlib.contextmanager
def _build_lock(build_directory):
    """Builds and loads of the kernels one process at a time, under a lock the kernel releases if its holder dies.

    torch marks a build in progress with a ``lock`` file that a killed build (a stopped Ray trial, a session
    ended mid-compile) leaves behind, and every later process then waits for it forever. Under this lock no
    other process of ours is building, so such a file is stale and is removed.
    """
    os.makedirs(build_directory, exist_ok=True)
    with open(os.path.join(build_directory, "recbole_cmr.flock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            stale = os.path.join(build_directory, "lock")
            if os.path.exists(stale):
                logging.getLogger().warning(f"removed {stale}, left by an interrupted build of ACMR's kernels")
                os.remove(stale)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_kernels():
    """The compiled extension, or None (with the reason logged once) if it cannot be built here."""
    if "module" in _loaded:
        return _loaded["module"]
    module = None
    try:
        from torch.utils import cpp_extension

        # AVX2 + FMA where the CPU has them (every machine of this project's kind), a portable build elsewhere;
        # the name carries the instruction set so a cached build never reaches a CPU without it.
        isa = "avx2" if platform.machine() == "x86_64" and {"avx2", "fma"} <= cpu_flags() else "generic"
        flags = ["-O3", "-fno-trapping-math", "-fopenmp"] + (["-mavx2", "-mfma"] if isa == "avx2" else [])
        name = f"recbole_cmr_acmr_kernels_{isa}"
        with _build_lock(cpp_extension._get_build_directory(name, verbose=False)):
            module = cpp_extension.load(name=name, sources=[_SOURCE], extra_cflags=flags,
                                        extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as err:  # no compiler, no ninja, a failed build: the PyTorch layer serves
        logging.getLogger().warning(f"ACMR's fused CPU kernels could not be built ({type(err).__name__}: "
                                    f"{str(err).splitlines()[0] if str(err) else ''}); using PyTorch's ops")
    _loaded["module"] = module
    return module


def _seed(active):
    """A seed for one kernel call's dropout masks, from torch's default generator."""
    return int(torch.randint(0, 2**62, (1,))) if active else 0


class FusedAttention(torch.autograd.Function):
    """``[b, n, 3d]`` packed q, k, v -> ``[b, n, d]`` attended values; keys at positions >= lengths are padding."""

    @staticmethod
    def forward(ctx, qkv, lengths, n_heads, p, training):
        kernels = load_kernels()
        seed = _seed(training and p > 0)
        ctx.save_for_backward(qkv, lengths)
        ctx.settings = (n_heads, p, seed, training)
        return kernels.attention_forward(qkv, lengths, n_heads, p, seed, training)

    @staticmethod
    def backward(ctx, grad):
        qkv, lengths = ctx.saved_tensors
        grad_qkv = load_kernels().attention_backward(grad.contiguous(), qkv, lengths, *ctx.settings)
        return grad_qkv, None, None, None, None


class FusedResidualNorm(torch.autograd.Function):
    """``LayerNorm(x + dropout(z))`` over the last dimension."""

    @staticmethod
    def forward(ctx, x, z, weight, bias, p, training, eps):
        seed = _seed(training and p > 0)
        y, xhat, rstd = load_kernels().residual_norm_forward(x.contiguous(), z.contiguous(), weight, bias, p, seed,
                                                             training, eps)
        ctx.save_for_backward(xhat, rstd, weight)
        ctx.settings = (p, seed, training)
        return y

    @staticmethod
    def backward(ctx, grad):
        xhat, rstd, weight = ctx.saved_tensors
        dx, dz, dweight, dbias = load_kernels().residual_norm_backward(grad.contiguous(), xhat, rstd, weight,
                                                                       *ctx.settings)
        return dx, dz, dweight, dbias, None, None, None


class FusedReluDropout(torch.autograd.Function):
    """``dropout(relu(a))``; backward needs only the output (positive exactly where a > 0 and kept)."""

    @staticmethod
    def forward(ctx, a, p, training):
        h = load_kernels().relu_dropout_forward(a.contiguous(), p, _seed(training and p > 0), training)
        ctx.save_for_backward(h)
        ctx.scale = 1.0 / (1.0 - p) if training and p > 0 else 1.0
        return h

    @staticmethod
    def backward(ctx, grad):
        (h,) = ctx.saved_tensors
        return load_kernels().relu_dropout_backward(grad.contiguous(), h, ctx.scale), None, None


def fused_layer_forward(layer, x, lengths):
    """One :class:`~recbole_cmr.model.acmr.TransformerLayer` on the fused kernels; ``lengths``: real positions
    per row (they come first, padding after)."""
    p = layer.attention_dropout.p
    qkv = F.linear(x, layer.qkv.weight, layer.qkv.bias)
    attended = FusedAttention.apply(qkv, lengths, layer.n_heads, p, layer.training)
    x = FusedResidualNorm.apply(x, F.linear(attended, layer.attention_out.weight, layer.attention_out.bias),
                                layer.attention_norm.weight, layer.attention_norm.bias, p, layer.training,
                                layer.attention_norm.eps)
    hidden = FusedReluDropout.apply(F.linear(x, layer.ffn_in.weight, layer.ffn_in.bias), p, layer.training)
    return FusedResidualNorm.apply(x, F.linear(hidden, layer.ffn_out.weight, layer.ffn_out.bias),
                                   layer.ffn_norm.weight, layer.ffn_norm.bias, p, layer.training,
                                   layer.ffn_norm.eps)
