# Copyright (c) the liverseg contributors. Licensed under the MIT License (see LICENSE).
"""The CPU inference path of the 3D networks (scripts.networks.channels_last): same results as the stock modules,
taken only without autograd on float32 CPU tensors, TorchScript-able, state dicts unchanged."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch.utils._python_dispatch import TorchDispatchMode

from tests.bundles.test_networks import VARIANTS, image, make  # also puts the bundle on sys.path

# isort: split
from scripts.networks.blocks import DecoderLevel
from scripts.networks.channels_last import (
    ChannelsLastConv3d,
    ChannelsLastConvolution,
    ChannelsLastConvTranspose3d,
    ChannelsLastDecoderLevel,
    instance_norm_channels_last_,
    use_channels_last_cpu_inference,
)

CL = torch.channels_last_3d
FAST = (ChannelsLastConv3d, ChannelsLastConvolution, ChannelsLastConvTranspose3d, ChannelsLastDecoderLevel)
STOCK = {
    ChannelsLastConv3d: nn.Conv3d,
    ChannelsLastConvolution: Convolution,
    ChannelsLastConvTranspose3d: nn.ConvTranspose3d,
    ChannelsLastDecoderLevel: DecoderLevel,
}
pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch build has no oneDNN")


def stock_copy(net: nn.Module) -> nn.Module:
    """A copy of ``net`` with the stock module classes back (the reference the fast path must match)."""
    ref = copy.deepcopy(net)
    for m in ref.modules():
        if type(m) in STOCK:
            m.__class__ = STOCK[type(m)]
    return ref


@pytest.mark.parametrize("variant", VARIANTS, ids=[v[0].__name__ for v in VARIANTS])
@pytest.mark.parametrize("batch", [1, 2])
def test_fast_path_matches_stock_modules(variant, batch):
    net = make(variant[0], 3).eval()
    fused_decoder = not getattr(net, "convlstm", False)  # concatenation skips: decoder levels write in place
    assert {type(m) for m in net.modules()} >= set(FAST if fused_decoder else FAST[:-1])
    ref = stock_copy(net)
    assert not any(type(m) in FAST for m in ref.modules())
    x = image(3, batch=batch, size=(32, 24, 16))
    with torch.no_grad():
        got, expected = net(x), ref(x)
    assert got.is_contiguous(memory_format=CL)  # it took the channels-last path to the end
    assert not expected.is_contiguous(memory_format=CL)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_autograd_and_2d_take_the_stock_path():
    net = make(VARIANTS[2][0], 3).eval()
    x = image(3, batch=1)
    y = net(x)  # autograd on: the parents' code, channels-first, differentiable
    assert y.requires_grad and not y.is_contiguous(memory_format=CL)
    y.sum().backward()
    first = next(m for m in net.modules() if isinstance(m, nn.Conv3d))
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0
    assert not any(type(m) in FAST for m in make(VARIANTS[2][0], 2).modules())
    with torch.no_grad():
        assert not net.double()(x.double()).is_contiguous(memory_format=CL)  # float64: stock path


def test_state_dict_unchanged():
    net = make(VARIANTS[3][0], 3)
    ref = stock_copy(net)
    assert list(net.state_dict()) == list(ref.state_dict())
    ref.load_state_dict(net.state_dict())  # and loads across


@pytest.mark.parametrize("variant", VARIANTS, ids=[v[0].__name__ for v in VARIANTS])
def test_torchscript_takes_the_fast_path(variant):
    net = make(variant[0], 3).eval()
    scripted = torch.jit.script(net)
    x = image(3, batch=1)
    with torch.no_grad():
        got = scripted(x)
        assert got.is_contiguous(memory_format=CL)
        torch.testing.assert_close(got, net(x), rtol=0, atol=0)


@pytest.mark.parametrize("channels", [1, 3, 8, 16, 32])
@pytest.mark.parametrize("scale, offset", [(3.0, 1.0), (0.01, 50.0)])  # the second: mean 5000 x the deviation
def test_instance_norm_channels_last_is_as_accurate_as_torch(channels, scale, offset):
    """Error against a float64 reference within what float32 allows: the variance of the centred values, not
    E[x^2] - E[x]^2, which loses every digit for the offset data (error 8.9 instead of 4e-4).

    Two limits, whichever is larger. At a mean 5000 x the deviation, the float32 sum of the mean limits any float32
    instance norm: at most 2 x PyTorch's own error. On centred data the limit is the variance: the diagonal of a
    float32 Gram matrix, a sum of m squares that the BLAS kernel accumulates in its vector lanes, in an order that
    depends on the instruction set (8 lanes with AVX2, 16 with AVX-512) and the thread count. Each lane sums m / 8
    terms at most, so the variance's relative error is at most (m / 8) u (u = 2^-24, unit roundoff) and the output's,
    after the square root, half that times |y|. PyTorch's cascade sum stays near log(m) u, which is why 2 x its
    error alone failed now and then (8 channels: 1.8e-6 against a limit of 1.8e-6, 3.5 float32 ulps of the output,
    with AVX2 and with AVX-512 on one thread); a formula error (E[x^2] - E[x]^2, m - 1 for m) is 100 x the bound."""
    torch.manual_seed(0)
    x = (torch.randn(2, channels, 12, 10, 8) * scale + offset).contiguous(memory_format=CL)
    expected = F.instance_norm(x.double())
    torch_error = (F.instance_norm(x).double() - expected).abs().max().item()
    got = instance_norm_channels_last_(x.clone(memory_format=CL), 1e-5)
    assert got.is_contiguous(memory_format=CL)
    m, u = 12 * 10 * 8, torch.finfo(torch.float32).eps / 2
    gram_bound = expected.abs().max().item() * (m / 8) * u / 2
    assert (got.double() - expected).abs().max().item() <= max(2 * torch_error, gram_bound)


def test_instance_norm_tolerance_still_catches_formula_errors():
    """The tolerance above is far below what a wrong formula gives: dividing by m - 1 instead of m."""
    torch.manual_seed(0)
    x = (torch.randn(2, 8, 12, 10, 8) * 3.0 + 1.0).contiguous(memory_format=CL)
    expected = F.instance_norm(x.double())
    m, u = 12 * 10 * 8, torch.finfo(torch.float32).eps / 2
    gram_bound = expected.abs().max().item() * (m / 8) * u / 2
    xd = x.double()
    unbiased = (xd - xd.mean((2, 3, 4), keepdim=True)) / (xd.var((2, 3, 4), keepdim=True) + 1e-5).sqrt()
    assert (unbiased - expected).abs().max().item() > 10 * gram_bound


@pytest.mark.parametrize("kernel", [(2, 2, 2), (2, 2, 1), (1, 2, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_transposed_conv_as_matrix_product(kernel, bias):
    torch.manual_seed(0)
    up = nn.ConvTranspose3d(6, 4, kernel_size=kernel, stride=kernel, bias=bias)
    fast = use_channels_last_cpu_inference(copy.deepcopy(up))
    assert type(fast) is ChannelsLastConvTranspose3d
    x = torch.randn(2, 6, 5, 4, 3)
    with torch.no_grad():
        got = fast(x)
        torch.testing.assert_close(got, up(x), rtol=1e-5, atol=1e-5)
    assert got.is_contiguous(memory_format=CL)


def test_overlapping_transposed_conv_keeps_torch_kernel():
    torch.manual_seed(0)
    up = nn.ConvTranspose3d(4, 2, kernel_size=3, stride=2, padding=1, output_padding=1)
    fast = use_channels_last_cpu_inference(copy.deepcopy(up))
    x = torch.randn(1, 4, 5, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), up(x))
        torch.testing.assert_close(fast(x, output_size=[9, 9, 9]), up(x, output_size=[9, 9, 9]))


def test_only_conv_instance_norm_leaky_relu_blocks_are_fused():
    blocks = [
        Convolution(3, 2, 4, act=("leakyrelu", {"negative_slope": 0.1}), norm="instance"),  # fused
        Convolution(3, 2, 4, act="relu", norm="instance"),  # another activation
        Convolution(3, 2, 4, act="leakyrelu", norm=("instance", {"affine": True})),  # affine norm
        Convolution(3, 2, 4, act="leakyrelu", norm="batch"),
        Convolution(3, 2, 4, act="leakyrelu", norm="instance", dropout=0.1),  # N, D, A
    ]
    model = use_channels_last_cpu_inference(nn.Sequential(*blocks)).eval()
    assert [type(b) is ChannelsLastConvolution for b in model] == [True, False, False, False, False]
    x = torch.randn(1, 2, 6, 6, 6)
    for block in model:
        with torch.no_grad():
            torch.testing.assert_close(block(x), stock_copy(block)(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS[:3], ids=[v[0].__name__ for v in VARIANTS[:3]])
def test_decoder_levels_write_in_place_without_concatenation(variant):
    """The concatenation skips are fused in place: no ``cat`` runs in the fast path (the stock one runs 4)."""
    class CountCat(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.cats = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.cats += func.overloadpacket is torch.ops.aten.cat
            return func(*args, **(kwargs or {}))

    net = make(variant[0], 3).eval()
    x = image(3, batch=1, size=(32, 24, 16))
    with torch.no_grad():
        with CountCat() as fast:
            net(x)
        with CountCat() as stock:
            stock_copy(net)(x)
    assert fast.cats == 0 and stock.cats == len(net.decoder)


@pytest.mark.parametrize(
    "c_in, c_out, kernel, size, bias",
    [
        (1, 8, 3, (10, 9, 12), True),  # the first convolution: one input channel (oneDNN answers channels-first)
        (8, 8, 3, (6, 7, 8), True),
        (16, 8, 3, (5, 6, 10), False),
        (3, 5, (3, 1, 5), (6, 5, 8), True),  # anisotropic kernel, wider along the paired axis
        (4, 2, (1, 3, 3), (4, 6, 6), True),
    ],
)
def test_convolution_with_few_output_channels_pairs_voxels(c_in, c_out, kernel, size, bias):
    """At most 8 output channels, stride 1, "same" padding and an even last axis: two voxels per output position
    (``2 * C_out`` channels, stride 2 along the last axis), the same values as the plain convolution."""
    torch.manual_seed(0)
    conv = nn.Conv3d(c_in, c_out, kernel, padding=tuple(k // 2 for k in _triple(kernel)), bias=bias)
    fast = use_channels_last_cpu_inference(copy.deepcopy(conv))
    x = torch.randn(2, c_in, *size)
    assert fast.pairs_voxels(x.contiguous(memory_format=CL))
    seen = []
    with torch.no_grad(), _RecordConvolutions(seen):
        got = fast(x)
    assert [(tuple(w.shape), stride) for w, stride in seen] == [
        ((2 * c_out, c_in, *_triple(kernel)[:2], _triple(kernel)[2] + 1), [1, 1, 2])
    ]
    assert got.shape == (2, c_out, *size) and got.is_contiguous(memory_format=CL)
    with torch.no_grad():
        torch.testing.assert_close(got, conv(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "conv, size",
    [
        (nn.Conv3d(8, 16, 3, padding=1), (6, 6, 8)),  # 16 output channels fill oneDNN's block already
        (nn.Conv3d(8, 8, 3, padding=1), (6, 6, 7)),  # odd last axis
        (nn.Conv3d(8, 8, 3, padding=1, stride=2), (6, 6, 8)),
        (nn.Conv3d(8, 8, 3, padding=0), (6, 6, 8)),  # not "same"
        (nn.Conv3d(8, 8, (3, 3, 1)), (6, 6, 8)),  # nothing to pair along the last axis
        (nn.Conv3d(8, 8, 3, padding=2, dilation=2), (6, 6, 8)),
        (nn.Conv3d(8, 8, 3, padding=1, groups=2), (6, 6, 8)),
    ],
)
def test_other_convolutions_are_not_paired(conv, size):
    fast = use_channels_last_cpu_inference(copy.deepcopy(conv))
    x = torch.randn(1, conv.in_channels, *size)
    assert not fast.pairs_voxels(x.contiguous(memory_format=CL))
    with torch.no_grad():
        torch.testing.assert_close(fast(x), conv(x), rtol=1e-5, atol=1e-5)


def _triple(kernel):
    return (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)


class _RecordConvolutions(TorchDispatchMode):
    """Records (weight, stride) of every oneDNN convolution run inside the ``with`` block."""

    def __init__(self, seen):
        super().__init__()
        self.seen = seen

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket is torch.ops.aten.mkldnn_convolution:
            self.seen.append((args[1], list(args[4])))
        return func(*args, **(kwargs or {}))
