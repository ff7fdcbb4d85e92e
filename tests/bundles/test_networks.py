# Copyright (c) the liverseg contributors. Licensed under the Apache License, Version 2.0.
"""Tests of the liver_ct_seg bundle networks (scripts.networks) and deep-supervision losses (scripts.losses)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

BUNDLE_ROOT = Path(__file__).resolve().parents[2] / "bundles" / "liver_ct_seg"
# every bundle has a package called ``scripts``: drop another bundle's one before importing ours
for _name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
    if not str(getattr(sys.modules[_name], "__file__", "") or "").startswith(str(BUNDLE_ROOT)):
        del sys.modules[_name]
if str(BUNDLE_ROOT) not in sys.path:
    sys.path.insert(0, str(BUNDLE_ROOT))

from monai.losses import DiceCELoss  # noqa: E402

from scripts.losses import CELoss, DeepSupervisionLoss, ds_weights  # noqa: E402
from scripts.networks import (  # noqa: E402
    AttentionGate,
    AttentionUNet,
    AttentionUNetDS,
    BiConvLSTMFusion,
    ConvLSTMCell,
    DALUNet,
    LiverSegNet,
    UNet,
    set_mc_dropout,
)

torch.set_num_threads(2)
# torch 2.14 deprecates torch.jit.script, which MONAI bundle export (ckpt_export) still uses
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")

CHANNELS = (4, 8, 16, 32)
STRIDES = (2, 2, 2)
SIZE = {2: (32, 32), 3: (16, 16, 16)}
# class, has attention, has deep supervision, has ConvLSTM
VARIANTS = [
    (UNet, False, False, False),
    (AttentionUNet, True, False, False),
    (AttentionUNetDS, True, True, False),
    (DALUNet, True, True, True),
]
CASES = [(v, sd) for v in VARIANTS for sd in (2, 3)]
IDS = [f"{v[0].__name__}-{sd}d" for v, sd in CASES]


def make(cls, spatial_dims, **kwargs):
    torch.manual_seed(0)
    return cls(spatial_dims, 1, 3, channels=CHANNELS, strides=STRIDES, **kwargs)


def image(spatial_dims, batch=2, size=None):
    torch.manual_seed(1)
    return torch.randn(batch, 1, *(size or SIZE[spatial_dims]))


@pytest.mark.parametrize("variant, spatial_dims", CASES, ids=IDS)
def test_output_shapes(variant, spatial_dims):
    cls, _, ds, _ = variant
    net = make(cls, spatial_dims)
    x = image(spatial_dims)
    with torch.no_grad():
        net.train()
        y_train = net(x)
        net.eval()
        y_eval = net(x)
    assert y_eval.shape == (2, 3, *SIZE[spatial_dims])
    if ds:
        # 3 decoder levels -> default heads: all but the lowest-resolution one
        assert net.num_ds_heads == 2
        assert y_train.shape == (2, 2, 3, *SIZE[spatial_dims])
    else:
        assert y_train.shape == (2, 3, *SIZE[spatial_dims])


@pytest.mark.parametrize("num_ds_heads", [1, 2, 3])
def test_num_ds_heads(num_ds_heads):
    net = make(DALUNet, 2, num_ds_heads=num_ds_heads).train()
    assert net(image(2)).shape == (2, num_ds_heads, 3, 32, 32)


@pytest.mark.parametrize("variant, spatial_dims", CASES, ids=IDS)
def test_torchscript_matches_eager(variant, spatial_dims):
    cls, _, ds, _ = variant
    net = make(cls, spatial_dims).eval()
    scripted = torch.jit.script(net)
    x = image(spatial_dims)
    with torch.no_grad():
        expected = net(x)
        got = scripted(x)
        assert torch.allclose(got, expected, atol=1e-5)
        scripted.train()
        train_out = scripted(x)
    assert train_out.dim() == spatial_dims + 2 + int(ds)


@pytest.mark.parametrize("variant, spatial_dims", CASES, ids=IDS)
def test_gradients_reach_first_conv(variant, spatial_dims):
    cls = variant[0]
    net = make(cls, spatial_dims).train()
    net(image(spatial_dims)).square().mean().backward()
    first = next(m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)))
    assert first.weight.shape[1] == 1  # the input convolution
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0
    no_grad = [n for n, p in net.named_parameters() if p.grad is None]
    assert no_grad == []


@pytest.mark.parametrize("cls", [v[0] for v in VARIANTS])
def test_anisotropic_strides_3d(cls):
    torch.manual_seed(0)
    net = cls(3, 1, 2, channels=CHANNELS, strides=((2, 2, 1), (2, 2, 1), 2)).eval()
    assert net.size_divisor == [8, 8, 2]
    with torch.no_grad():
        assert net(torch.randn(1, 1, 16, 24, 6)).shape == (1, 2, 16, 24, 6)
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 1, 16, 24, 5))


def test_input_size_and_rank_checked():
    net = make(UNet, 2).eval()
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 1, 30, 32))
    with pytest.raises(ValueError, match="spatial dims"):
        net(torch.randn(1, 1, 32, 32, 32))


@pytest.mark.parametrize("variant", VARIANTS, ids=[v[0].__name__ for v in VARIANTS])
def test_modules_of_each_variant(variant):
    cls, attention, ds, convlstm = variant
    net = make(cls, 3)
    kinds = {type(m) for m in net.modules()}
    assert (AttentionGate in kinds) == attention
    assert (ConvLSTMCell in kinds) == convlstm and (BiConvLSTMFusion in kinds) == convlstm
    assert (len(net.ds_heads) > 0) == ds
    assert isinstance(net, LiverSegNet)
    n_gates = sum(isinstance(m, AttentionGate) for m in net.modules())
    assert n_gates == (len(STRIDES) if attention else 0)


def test_attention_gate_coefficients():
    torch.manual_seed(0)
    gate = AttentionGate(3, skip_channels=4, gating_channels=8, inter_channels=2, stride=(2, 2, 1))
    skip, gating = torch.randn(1, 4, 8, 8, 4), torch.randn(1, 8, 4, 4, 4)
    alpha = gate.attention(skip, gating)
    assert alpha.shape == (1, 1, 8, 8, 4)
    assert alpha.min() >= 0 and alpha.max() <= 1
    assert torch.allclose(gate(skip, gating), skip * alpha)


def test_convlstm_reads_both_inputs():
    torch.manual_seed(0)
    fusion = BiConvLSTMFusion(2, channels=5)
    up, skip = torch.randn(1, 5, 8, 8), torch.randn(1, 5, 8, 8)
    out = fusion(up, skip)
    assert out.shape == (1, 5, 8, 8)  # 2 + 3 hidden channels
    assert not torch.allclose(fusion(up + 1, skip), out)
    assert not torch.allclose(fusion(up, skip + 1), out)
    assert torch.jit.script(fusion)(up, skip).allclose(out, atol=1e-6)


@pytest.mark.parametrize("scripted", [False, True], ids=["eager", "torchscript"])
def test_mc_dropout(scripted):
    net = make(DALUNet, 2, dropout=0.3).eval()
    if scripted:
        net = torch.jit.script(net)
    x = image(2, batch=1)
    with torch.no_grad():
        assert torch.equal(net(x), net(x))  # eval: dropout off
        assert set_mc_dropout(net, True) == len(STRIDES)  # one per decoder level
        assert not torch.allclose(net(x), net(x))
        assert net(x).shape == (1, 3, 32, 32)  # still the eval output: other layers stay in eval mode
        set_mc_dropout(net, False)
        assert torch.equal(net(x), net(x))


def test_no_dropout_by_default():
    net = make(AttentionUNet, 3).eval()
    assert not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in net.modules())
    assert net.set_mc_dropout(True) == 0
    x = image(3, batch=1)
    with torch.no_grad():
        assert torch.equal(net(x), net(x))


BAD_ARGS = [
    ({"spatial_dims": 1}, "spatial_dims"),
    ({"spatial_dims": 4}, "spatial_dims"),
    ({"in_channels": 0}, "in_channels"),
    ({"out_channels": -2}, "out_channels"),
    ({"channels": (4,)}, "channels"),
    ({"channels": (4, 0, 16, 32)}, "channels"),
    ({"channels": (4, 8.0, 16, 32)}, "channels"),
    ({"strides": (2, 2)}, "strides"),
    ({"strides": (2, 2, 2, 2)}, "strides"),
    ({"strides": (2, 2, (2, 2))}, r"strides\[2\]"),
    ({"strides": (2, 0, 2)}, r"strides\[1\]"),
    ({"kernel_size": 4}, "kernel_size"),
    ({"kernel_size": (3, 3)}, "kernel_size"),
    ({"dropout": 1.0}, "dropout"),
    ({"dropout": -0.1}, "dropout"),
    ({"deep_supervision": True, "num_ds_heads": 4}, "num_ds_heads"),
    ({"deep_supervision": True, "num_ds_heads": 0}, "num_ds_heads"),
    ({"num_ds_heads": 2}, "num_ds_heads"),
    ({"convlstm": True, "channels": (1, 8, 16, 32)}, "convlstm"),
]


@pytest.mark.parametrize("kwargs, match", BAD_ARGS, ids=[str(k) for k, _ in BAD_ARGS])
def test_bad_arguments_raise(kwargs, match):
    args = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": CHANNELS, "strides": STRIDES}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        LiverSegNet(**args)


@pytest.mark.parametrize(
    "n, zero_lowest, expected",
    [
        (1, False, [1.0]),
        (2, False, [2 / 3, 1 / 3]),
        (4, False, [8 / 15, 4 / 15, 2 / 15, 1 / 15]),
        (4, True, [4 / 7, 2 / 7, 1 / 7, 0.0]),
    ],
)
def test_ds_weights(n, zero_lowest, expected):
    assert ds_weights(n, zero_lowest) == pytest.approx(expected)


@pytest.mark.parametrize("n, zero_lowest", [(0, False), (-1, False), (1, True), (2.0, False)])
def test_ds_weights_bad(n, zero_lowest):
    with pytest.raises(ValueError):
        ds_weights(n, zero_lowest)


@pytest.mark.parametrize(
    "base", [DiceCELoss(to_onehot_y=True, softmax=True), CELoss()], ids=["DiceCE", "CE"]
)
def test_deep_supervision_loss(base):
    torch.manual_seed(0)
    stacked = torch.randn(2, 4, 3, 8, 8, 8)
    target = torch.randint(0, 3, (2, 1, 8, 8, 8))
    expected = sum(w * base(stacked[:, i], target) for i, w in enumerate(ds_weights(4)))
    assert torch.allclose(DeepSupervisionLoss(base)(stacked, target), expected)
    assert torch.allclose(DeepSupervisionLoss(base)(stacked[:, 0], target), base(stacked[:, 0], target))
    custom = DeepSupervisionLoss(base, weights=[2, 0, 0, 0])  # normalized -> only the full-resolution head
    assert torch.allclose(custom(stacked, target), base(stacked[:, 0], target))


def test_deep_supervision_loss_bad_inputs():
    loss = DeepSupervisionLoss(CELoss())
    target = torch.randint(0, 3, (2, 1, 8, 8))
    with pytest.raises(ValueError, match="does not fit"):
        loss(torch.randn(2, 1, 2, 3, 8, 8), target)
    with pytest.raises(ValueError, match="3 heads"):
        DeepSupervisionLoss(CELoss(), weights=[1, 1])(torch.randn(2, 3, 3, 8, 8), target)
    with pytest.raises(ValueError, match="weights"):
        DeepSupervisionLoss(CELoss(), weights=[0, 0])
    with pytest.raises(ValueError, match="label target"):
        CELoss()(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 3, 8, 8)))


def test_ce_loss_matches_torch():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 4, 4, 4), torch.randint(0, 3, (2, 1, 4, 4, 4))
    expected = nn.functional.cross_entropy(logits, target[:, 0])
    assert torch.allclose(CELoss()(logits, target), expected)
    assert torch.allclose(CELoss()(logits, target[:, 0]), expected)


def test_overfit_one_blob():
    """3D AU-Net + DS with DiceCE deep supervision fits one 16^3 blob: loss drops by more than half in 30 steps."""
    torch.manual_seed(0)
    grid = torch.stack(torch.meshgrid(*[torch.arange(16.0)] * 3, indexing="ij"))
    blob = ((grid - torch.tensor([8.0, 7.0, 9.0]).view(3, 1, 1, 1)) ** 2).sum(0) < 5.0**2
    label = blob[None, None].long()
    img = blob[None, None].float() + 0.3 * torch.randn(1, 1, 16, 16, 16)
    net = AttentionUNetDS(3, 1, 2, channels=(4, 8, 16, 32), strides=(2, 2, 2)).train()
    loss_fn = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(net(img), label)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
