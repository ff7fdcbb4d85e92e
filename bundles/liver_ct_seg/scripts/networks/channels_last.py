# Copyright (c) the liverseg contributors. Licensed under the MIT License (see LICENSE).
"""Fast 3D inference on the CPU: oneDNN convolutions and instance norm on channels-last activations.

With stock modules, a batch-1 ``Conv3d`` on the CPU runs PyTorch's slow reference kernel (``slow_conv3d``)
whenever ``N * C * D * H`` is small (the first convolution, every level below the second), and oneDNN reorders
each channels-first activation to its blocked layout and back. The modules below keep activations channels-last
(``torch.channels_last_3d``) from the first convolution to the last and call oneDNN directly
(``torch.mkldnn_convolution``); a conv-norm-act block normalizes its own convolution output in place (instance
norm in two passes, mean then the variance of the centred values, so no precision is lost to
``E[x^2] - E[x]^2``) and applies its leaky ReLU in place; a decoder level with concatenation writes the
upsampled feature and the (gated) skip straight into the two channel halves of its fused input (no concatenation
copy).

They are drop-in subclasses of ``nn.Conv3d`` and MONAI's ``Convolution``: same parameters, same state dict, same
results up to float rounding (a different summation order). They take the fast path only for float32 CPU tensors
with autograd off (inference, validation); training, GPUs and AMP run the parents' code. TorchScript-scriptable.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution

from .blocks import ConcatFusion, DecoderLevel

__all__ = [
    "ChannelsLastConv3d",
    "ChannelsLastConvTranspose3d",
    "ChannelsLastConvolution",
    "ChannelsLastDecoderLevel",
    "instance_norm_channels_last_",
    "use_channels_last_cpu_inference",
]


def _cpu_inference(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()


class ChannelsLastConv3d(nn.Conv3d):
    """``nn.Conv3d`` that runs oneDNN on channels-last tensors for CPU inference (see the module docstring).

    A "same" convolution with stride 1 and at most 8 output channels (the full-resolution level of the default
    networks) runs as a convolution that gives two neighbouring voxels along the last axis per output position:
    ``2 * C_out`` output channels, stride 2 and one more tap along that axis (the first ``C_out`` channels hold the
    kernel at taps ``0..k-1``, the others at ``1..k``, the rest zeros). oneDNN pads fewer than 16 output channels
    to 16, so this fills the lanes it computes anyway: 1.33 x the multiply-adds in 0.7 x the time. The output,
    ``[N, 2 * C_out, D, H, W / 2]`` channels-last, is ``[N, C_out, D, H, W]`` channels-last in memory (a view, no
    copy); the zero taps add exact zeros, so the values are those of the plain convolution (equal on the networks'
    full-resolution layers in our tests)."""

    def pairs_voxels(self, x: torch.Tensor) -> bool:
        """Whether the fast path on channels-last ``x`` computes two voxels per output position (see the class)."""
        kw = self.kernel_size[2]
        return (
            x.dim() == 5
            and 2 * self.out_channels <= 16  # oneDNN's block of output channels (AVX-512: 16 floats)
            and self.groups == 1
            and self.stride == (1, 1, 1)
            and self.dilation == (1, 1, 1)
            and kw > 1
            and self.padding[2] * 2 + 1 == kw
            and x.shape[4] % 2 == 0
        )

    def paired_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution of channels-last ``x`` as two voxels per output position (where :meth:`pairs_voxels`)."""
        c_out, c_in, kd, kh, kw = self.weight.shape
        weight = self.weight.new_zeros((2 * c_out, c_in, kd, kh, kw + 1))
        weight[:c_out, :, :, :, :kw] = self.weight
        weight[c_out:, :, :, :, 1:] = self.weight
        bias = self.bias
        if bias is not None:
            bias = bias.repeat(2)
        y = torch.mkldnn_convolution(
            x, weight.contiguous(memory_format=torch.channels_last_3d), bias, self.padding, (1, 1, 2), self.dilation, 1
        )
        n, _, d, h, w_half = y.shape
        # a single input channel is ambiguous in layout, and oneDNN then answers channels-first
        y = y.contiguous(memory_format=torch.channels_last_3d).permute(0, 2, 3, 4, 1)
        return y.view(n, d, h, 2 * w_half, c_out).permute(0, 4, 1, 2, 3)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if _cpu_inference(input) and self.padding_mode == "zeros" and not isinstance(self.padding, str):
            x = input.contiguous(memory_format=torch.channels_last_3d)
            if self.pairs_voxels(x):
                return self.paired_forward(x)
            w = self.weight.contiguous(memory_format=torch.channels_last_3d)
            y = torch.mkldnn_convolution(x, w, self.bias, self.padding, self.stride, self.dilation, self.groups)
            # oneDNN answers channels-first when the input layout is ambiguous (1 channel): keep channels-last
            return y.contiguous(memory_format=torch.channels_last_3d)
        return self._conv_forward(input, self.weight, self.bias)


class ChannelsLastConvTranspose3d(nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` whose CPU inference, when the kernel equals the stride (no overlap, no padding),
    is one matrix product of the channels-last input with the kernel followed by a depth-to-space copy, giving a
    channels-last output (PyTorch's own kernel is a slow reference one here and answers channels-first)."""

    def takes_fast_path(self, input: torch.Tensor) -> bool:
        """Whether CPU inference on ``input`` runs as a matrix product (see the class docstring)."""
        return (
            _cpu_inference(input)
            and input.dim() == 5
            and self.groups == 1
            and self.kernel_size == self.stride
            and self.padding == (0, 0, 0)
            and self.output_padding == (0, 0, 0)
            and self.dilation == (1, 1, 1)
        )

    def forward_into(self, input: torch.Tensor, out: torch.Tensor) -> None:
        """The fast path written into ``out`` (``[N, C_out, D * kd, H * kh, W * kw]`` with channel stride 1, e.g. a
        channel slice of a channels-last tensor). Only where :meth:`takes_fast_path` is True."""
        n, c_in, d, h, w = input.shape
        kd, kh, kw = self.kernel_size
        c_out = self.weight.shape[1]
        rows = input.contiguous(memory_format=torch.channels_last_3d).permute(0, 2, 3, 4, 1).reshape(-1, c_in)
        # columns ordered (kd, kh, kw, c_out): the depth-to-space copy then moves rows of kw * c_out values
        kernel = self.weight.permute(0, 2, 3, 4, 1).reshape(c_in, kd * kh * kw * c_out)
        bias = self.bias
        if bias is None:
            y = torch.mm(rows, kernel)
        else:
            y = torch.addmm(bias.repeat(kd * kh * kw), rows, kernel)
        target = out.permute(0, 2, 3, 4, 1).view(n, d, kd, h, kh, w, kw, c_out)
        target.copy_(y.view(n, d, h, w, kd, kh, kw, c_out).permute(0, 1, 4, 2, 5, 3, 6, 7))

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if output_size is None and self.takes_fast_path(input):
            n, _, d, h, w = input.shape
            kd, kh, kw = self.kernel_size
            out = torch.empty(
                (n, d * kd, h * kh, w * kw, self.weight.shape[1]), dtype=input.dtype, device=input.device
            ).permute(0, 4, 1, 2, 3)
            self.forward_into(input, out)
            return out
        if self.padding_mode != "zeros":
            raise ValueError("Only `zeros` padding mode is supported for ConvTranspose3d")
        return F.conv_transpose3d(
            input,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size, 3, self.dilation),
            self.groups,
            self.dilation,
        )


def instance_norm_channels_last_(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Instance norm (no affine) of a channels-last 5D tensor, in place; returns ``x``.

    Viewed as ``[N, voxels, C]``: the per-channel mean by a sum, the centred values in place, their variance as
    the diagonal of their Gram matrix (one matrix product, no squared copy), the scaling in place. When ``C`` is
    below 16, the element-wise passes run on rows of 16 values (``16 // C`` voxels per row, one AVX-512 register).
    """
    n, c = x.shape[0], x.shape[1]
    rows = x.permute(0, 2, 3, 4, 1).view(n, -1, c)
    m = rows.shape[1]
    k = 16 // c if c < 16 and m % (16 // c) == 0 else 1
    wide = rows.view(n, m // k, c * k)
    wide.sub_((rows.sum(1, keepdim=True) / m).repeat(1, 1, k))
    var = torch.bmm(rows.transpose(1, 2), rows).diagonal(dim1=1, dim2=2).unsqueeze(1) / m
    wide.mul_(torch.rsqrt(var + eps).repeat(1, 1, k))
    return x


class ChannelsLastConvolution(Convolution):
    """MONAI ``Convolution`` (conv, instance norm, leaky ReLU) whose CPU inference normalizes and activates its
    convolution output in place, channels-last. Built only by :func:`use_channels_last_cpu_inference`, for blocks
    whose ``adn`` is exactly ``N`` (``InstanceNorm3d`` without affine or running stats) then ``A`` (``LeakyReLU``).
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        y = self.conv(input)
        if _cpu_inference(y) and y.is_contiguous(memory_format=torch.channels_last_3d):
            instance_norm_channels_last_(y, self.adn.N.eps)
            return F.leaky_relu_(y, self.adn.A.negative_slope)
        return self.adn(y)


class ChannelsLastDecoderLevel(DecoderLevel):
    """Decoder level with concatenation (:class:`DecoderLevel` with :class:`ConcatFusion`) whose CPU inference
    writes the upsampled feature and the (gated) skip into the two channel halves of one channels-last tensor, the
    input of its first convolution: no concatenation copy (at full resolution the largest copy of the network).
    Built only by :func:`use_channels_last_cpu_inference`; the same values as the parent's ``forward``."""

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.up.takes_fast_path(x) and _cpu_inference(skip):
            n, c_skip, d, h, w = skip.shape
            c_up = self.up.weight.shape[1]
            kd, kh, kw = self.up.kernel_size
            if (x.shape[2] * kd, x.shape[3] * kh, x.shape[4] * kw) == (d, h, w):
                fused = torch.empty((n, d, h, w, c_up + c_skip), dtype=x.dtype, device=x.device).permute(0, 4, 1, 2, 3)
                self.up.forward_into(x, fused[:, :c_up])
                self.gate.forward_into(skip, x, fused[:, c_up:])
                return self.conv2(self.dropout(self.conv1(fused)))
        # DecoderLevel.forward (TorchScript has no super())
        y = self.fusion(self.up(x), self.gate(skip, x))
        return self.conv2(self.dropout(self.conv1(y)))


def _is_norm_act(block: nn.Module) -> bool:
    adn = getattr(block, "adn", None)
    if adn is None or [name for name, _ in adn.named_children()] != ["N", "A"]:
        return False
    norm, act = adn.N, adn.A
    return (
        type(norm) is nn.InstanceNorm3d
        and not norm.affine
        and not norm.track_running_stats
        and type(act) is nn.LeakyReLU
    )


_TRANSPOSED = (nn.ConvTranspose3d, ChannelsLastConvTranspose3d)


def use_channels_last_cpu_inference(module: nn.Module) -> nn.Module:
    """Switch, in place, every plain ``nn.Conv3d`` / ``nn.ConvTranspose3d`` inside ``module`` to
    :class:`ChannelsLastConv3d` / :class:`ChannelsLastConvTranspose3d`, every MONAI ``Convolution`` that is
    conv + instance norm + leaky ReLU to :class:`ChannelsLastConvolution` and every 3D :class:`DecoderLevel` with
    concatenation to :class:`ChannelsLastDecoderLevel`.

    The modules keep their parameters and buffers (the classes add no state), so state dicts load as before.
    Does nothing where PyTorch has no oneDNN. Returns ``module``.
    """
    if not torch.backends.mkldnn.is_available():
        return module
    for m in module.modules():
        if type(m) is nn.Conv3d:
            m.__class__ = ChannelsLastConv3d
        elif type(m) is nn.ConvTranspose3d:
            m.__class__ = ChannelsLastConvTranspose3d
        elif type(m) is Convolution and _is_norm_act(m):
            m.__class__ = ChannelsLastConvolution
        elif type(m) is DecoderLevel and type(m.fusion) is ConcatFusion and type(m.up) in _TRANSPOSED:
            m.__class__ = ChannelsLastDecoderLevel
    return module
