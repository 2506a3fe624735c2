"""ACMR's fused CPU kernels against PyTorch's ops: same outputs and gradients, same dropout distribution."""

import shutil

import pytest
import torch

from recbole_cmr.model.acmr import TransformerLayer
from recbole_cmr.model.acmr_kernels import (
    FusedAttention,
    FusedReluDropout,
    FusedResidualNorm,
    fused_layer_forward,
    load_kernels,
)

# Only a machine without a C++ compiler may skip: where one exists, a failed build is a failure.
pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="no C++ compiler: ACMR runs on PyTorch's ops here")


def test_the_kernels_build_where_a_compiler_exists():
    assert load_kernels() is not None


def padded_batch(d, lengths, dtype, seed=0):
    torch.manual_seed(seed)
    n = int(lengths.max())
    x = torch.randn(len(lengths), n, d, dtype=dtype, requires_grad=True)
    padding = torch.arange(n)[None, :] >= lengths[:, None]
    bias = torch.zeros(len(lengths), n, dtype=dtype).masked_fill(padding, float("-inf"))[:, None, None, :]
    return x, bias


@pytest.mark.parametrize("dtype, d, heads, tolerance", [
    (torch.float32, 32, 8, 1e-5),   # ACMR's shape: the AVX2 kernel where the CPU has it
    (torch.float64, 32, 8, 1e-12),
    (torch.float64, 12, 3, 1e-12),  # any other shape: the generic kernel
])
def test_fused_layer_equals_pytorch_layer_without_dropout(dtype, d, heads, tolerance):
    layer = TransformerLayer(d, heads, 0.0).to(dtype)
    lengths = torch.tensor([9, 3, 1, 5, 9, 7])
    x, bias = padded_batch(d, lengths, dtype)
    weights = torch.randn(len(lengths), 9, d, dtype=dtype)
    expected = layer(x, bias)
    expected_grads = torch.autograd.grad((expected * weights).sum(), [x, *layer.parameters()])
    got = fused_layer_forward(layer, x, lengths)
    got_grads = torch.autograd.grad((got * weights).sum(), [x, *layer.parameters()])
    assert torch.allclose(got, expected, atol=tolerance, rtol=0)
    for a, b in zip(got_grads, expected_grads):
        assert torch.allclose(a, b, atol=tolerance * 10, rtol=0)


def seeded(function, seed):
    def call(*args):
        torch.manual_seed(seed)  # the same dropout masks in every evaluation gradcheck makes
        return function(*args)
    return call


def test_gradients_with_dropout_match_finite_differences():
    qkv = torch.randn(3, 5, 24, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(seeded(lambda q: FusedAttention.apply(q, torch.tensor([5, 2, 4]), 2, 0.3, True),
                                           1), (qkv,))
    x, z = (torch.randn(4, 6, dtype=torch.float64, requires_grad=True) for _ in range(2))
    weight, bias = (torch.randn(6, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(seeded(lambda *a: FusedResidualNorm.apply(*a, 0.3, True, 1e-5), 2),
                                    (x, z, weight, bias))
    a = torch.randn(50, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(seeded(lambda t: FusedReluDropout.apply(t, 0.3, True), 3), (a,))


def test_vectorised_and_generic_attention_draw_the_same_masks():
    kernels = load_kernels()
    qkv = torch.randn(7, 11, 96, dtype=torch.float64)
    lengths = torch.tensor([11, 3, 1, 5, 11, 7, 2])
    grad = torch.randn(7, 11, 32, dtype=torch.float64)
    fast = kernels.attention_forward(qkv.float(), lengths, 8, 0.3, 123, True)
    generic = kernels.attention_forward(qkv, lengths, 8, 0.3, 123, True)
    assert torch.allclose(fast.double(), generic, atol=1e-5)
    fast = kernels.attention_backward(grad.float(), qkv.float(), lengths, 8, 0.3, 123, True)
    generic = kernels.attention_backward(grad, qkv, lengths, 8, 0.3, 123, True)
    assert torch.allclose(fast.double(), generic, atol=1e-5)


def test_dropout_drops_p_of_the_elements_and_follows_torch_seed():
    ones = torch.ones(1000, 1000)
    torch.manual_seed(0)
    first = FusedReluDropout.apply(ones, 0.3, True)
    assert abs(float((first == 0).float().mean()) - 0.3) < 0.003
    assert torch.allclose(first[first > 0], torch.tensor(1 / 0.7))
    torch.manual_seed(0)
    assert torch.equal(FusedReluDropout.apply(ones, 0.3, True), first)
    assert not torch.equal(FusedReluDropout.apply(ones, 0.3, True), first)
    assert torch.equal(FusedReluDropout.apply(ones, 0.3, False), ones)  # eval: no dropout


def test_acmr_scores_the_same_with_either_path(tiny_config):
    from recbole_cmr.data.dataset import CrossMarketDataset
    from recbole_cmr.model.acmr import ACMR

    eager_config = tiny_config("ACMR", embedding_size=32, n_heads=8, n_layers=2, fused_kernels="eager")
    fused_config = tiny_config("ACMR", embedding_size=32, n_heads=8, n_layers=2, fused_kernels="fused")
    train = CrossMarketDataset(eager_config).build()[0]
    eager, fused = ACMR(eager_config, train).eval(), ACMR(fused_config, train).eval()
    fused.load_state_dict(eager.state_dict())
    assert fused.fused and not eager.fused
    users = torch.arange(1, 30)
    items = torch.randint(1, train.item_num, (29,))
    with torch.no_grad():
        assert torch.allclose(eager(users, items), fused(users, items), atol=1e-5)


def test_vectorised_and_generic_residual_norm_draw_the_same_masks():
    kernels = load_kernels()
    x, z, grad = (torch.randn(37, 32, dtype=torch.float64) for _ in range(3))
    weight, bias = torch.randn(32, dtype=torch.float64), torch.randn(32, dtype=torch.float64)
    fast = kernels.residual_norm_forward(x.float(), z.float(), weight.float(), bias.float(), 0.3, 9, True, 1e-5)
    generic = kernels.residual_norm_forward(x, z, weight, bias, 0.3, 9, True, 1e-5)
    for a, b in zip(fast, generic):
        assert torch.allclose(a.double(), b, atol=1e-5)
    fast = kernels.residual_norm_backward(grad.float(), fast[1], fast[2], weight.float(), 0.3, 9, True)
    generic = kernels.residual_norm_backward(grad, generic[1], generic[2], weight, 0.3, 9, True)
    for a, b in zip(fast, generic):
        assert torch.allclose(a.double(), b, atol=1e-4)


def test_a_build_lock_left_by_a_killed_build_is_removed_and_the_lock_dies_with_its_holder(tmp_path):
    import fcntl
    import signal
    import subprocess
    import sys

    from recbole_cmr.model.acmr_kernels import _build_lock

    (tmp_path / "lock").touch()  # what torch leaves when a build is killed: later builds would wait forever
    with _build_lock(str(tmp_path)):
        assert not (tmp_path / "lock").exists()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from recbole_cmr.model.acmr_kernels import "
                               f"_build_lock\nwith _build_lock({str(tmp_path)!r}):\n print('held', flush=True); "
                               "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        (tmp_path / "lock").touch()  # the holder's build in progress
        with open(tmp_path / "recbole_cmr.flock") as handle, pytest.raises(BlockingIOError):
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # no second builder while the holder lives
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with _build_lock(str(tmp_path)):  # the kernel released the killed holder's lock
        assert not (tmp_path / "lock").exists()
