# Copyright (c) the liverseg contributors. Licensed under the MIT License (see LICENSE).
"""Building blocks of :class:`scripts.networks.LiverSegNet`: attention gate, ConvLSTM skip fusion, decoder level.

Every block works for ``spatial_dims`` 2 and 3 and is TorchScript-scriptable. Variants are expressed through
sub-modules with the same ``forward`` signature (e.g. :class:`IdentityGate` / :class:`AttentionGate`), so that the
scripted graph holds no optional branches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv, Dropout

__all__ = [
    "AttentionGate",
    "IdentityGate",
    "ConcatFusion",
    "ConvLSTMCell",
    "BiConvLSTMFusion",
    "DecoderLevel",
    "interp_mode",
]


def interp_mode(spatial_dims: int) -> str:
    """Linear interpolation mode name for ``torch.nn.functional.interpolate`` ("bilinear" / "trilinear")."""
    return "bilinear" if spatial_dims == 2 else "trilinear"


class IdentityGate(nn.Module):
    """Skip connection without attention: returns the skip unchanged (same signature as :class:`AttentionGate`)."""

    def forward(self, skip: torch.Tensor, gating: torch.Tensor) -> torch.Tensor:
        return skip

    def forward_into(self, skip: torch.Tensor, gating: torch.Tensor, out: torch.Tensor) -> None:
        """``forward`` written into ``out`` (e.g. a channel slice of the fused decoder input)."""
        out.copy_(skip)


class AttentionGate(nn.Module):
    """
    Additive attention gate of Oktay et al. (2018), "Attention U-Net: Learning Where to Look for the Pancreas",
    https://arxiv.org/abs/1804.03999.

    ``theta`` is a strided convolution (kernel = stride) that brings the skip to the resolution of the gating
    signal, ``phi`` a 1x1 convolution of the gating signal (the coarser decoder feature),
    ``alpha = sigmoid(psi(relu(theta(skip) + phi(gating))))`` is computed at the coarse resolution, resampled
    (linear) to the skip resolution and multiplied into the skip.

    Args:
        spatial_dims: 2 or 3.
        skip_channels: channels of the encoder skip.
        gating_channels: channels of the gating signal.
        inter_channels: channels of the intermediate (theta + phi) space.
        stride: resolution ratio skip / gating, per axis.
    """

    def __init__(
        self, spatial_dims: int, skip_channels: int, gating_channels: int, inter_channels: int, stride: Sequence[int]
    ) -> None:
        super().__init__()
        conv_type = Conv[Conv.CONV, spatial_dims]
        stride = tuple(int(s) for s in stride)
        self.theta = conv_type(skip_channels, inter_channels, kernel_size=stride, stride=stride, bias=False)
        self.phi = conv_type(gating_channels, inter_channels, kernel_size=1, bias=True)
        self.psi = conv_type(inter_channels, 1, kernel_size=1, bias=True)
        self.mode = interp_mode(spatial_dims)

    def attention(self, skip: torch.Tensor, gating: torch.Tensor) -> torch.Tensor:
        """The attention coefficients ``alpha`` in [0, 1], shape ``[B, 1, *skip spatial]``."""
        theta = self.theta(skip)
        phi = self.phi(gating)
        if phi.shape[2:] != theta.shape[2:]:
            phi = F.interpolate(phi, size=theta.shape[2:], mode=self.mode, align_corners=False)
        alpha = torch.sigmoid(self.psi(F.relu(theta + phi)))
        if alpha.shape[2:] != skip.shape[2:]:
            alpha = F.interpolate(alpha, size=skip.shape[2:], mode=self.mode, align_corners=False)
        return alpha

    def forward(self, skip: torch.Tensor, gating: torch.Tensor) -> torch.Tensor:
        return skip * self.attention(skip, gating)

    def forward_into(self, skip: torch.Tensor, gating: torch.Tensor, out: torch.Tensor) -> None:
        """``forward`` written into ``out`` (e.g. a channel slice of the fused decoder input)."""
        torch.mul(skip, self.attention(skip, gating), out=out)


class ConcatFusion(nn.Module):
    """U-Net skip fusion: channel concatenation ``[upsampled decoder feature, skip]`` (2 x channels out)."""

    def forward(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return torch.cat([up, skip], dim=1)


class ConvLSTMCell(nn.Module):
    """
    Convolutional LSTM cell (Shi et al. 2015): all four gates from one convolution over ``[x, h]``.

    ``i, f, o = sigmoid(.)``, ``g = tanh(.)``, ``c' = f * c + i * g``, ``h' = o * tanh(c')``.
    The forget-gate bias starts at 1.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the input ``x``.
        hidden_channels: channels of ``h`` and ``c``.
        kernel_size: odd kernel size of the gate convolution ("same" padding).
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, hidden_channels: int, kernel_size: Sequence[int] | int = 3
    ) -> None:
        super().__init__()
        ks = (kernel_size,) * spatial_dims if isinstance(kernel_size, int) else tuple(kernel_size)
        self.hidden_channels = int(hidden_channels)
        self.gates = Conv[Conv.CONV, spatial_dims](
            in_channels + hidden_channels, 4 * hidden_channels, kernel_size=ks, padding=tuple(k // 2 for k in ks)
        )
        with torch.no_grad():
            self.gates.bias.zero_()
            self.gates.bias[hidden_channels : 2 * hidden_channels].fill_(1.0)

    def init_state(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero ``(h, c)`` matching the batch and spatial size of ``x``."""
        size = [x.shape[0], self.hidden_channels] + list(x.shape[2:])
        return x.new_zeros(size), x.new_zeros(size)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gates = self.gates(torch.cat([x, h], dim=1))
        # one sigmoid over all gates (g's share is unused): a channel chunk of a channels-last tensor is strided,
        # and element-wise functions on it run 3 x slower than on the whole tensor (same values either way)
        i, f, _, o = torch.chunk(torch.sigmoid(gates), 4, dim=1)
        g = torch.tanh(torch.chunk(gates, 4, dim=1)[2])
        c = f * c + i * g
        h = o * torch.tanh(c)
        return h, c


class BiConvLSTMFusion(nn.Module):
    """
    Skip fusion of BCDU-Net (Azad et al. 2019, https://arxiv.org/abs/1909.00166): the encoder skip and the
    upsampled decoder feature are read as a 2-step sequence ``[skip, up]`` by a bidirectional ConvLSTM; the final
    hidden states of both directions (half the channels each) are concatenated, giving ``channels`` channels.

    Args:
        spatial_dims: 2 or 3.
        channels: channels of both inputs and of the output (>= 2).
        kernel_size: kernel size of the gate convolutions.
    """

    def __init__(self, spatial_dims: int, channels: int, kernel_size: Sequence[int] | int = 3) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"BiConvLSTMFusion needs channels >= 2 (half per direction), got {channels}.")
        self.forward_cell = ConvLSTMCell(spatial_dims, channels, channels // 2, kernel_size)
        self.backward_cell = ConvLSTMCell(spatial_dims, channels, channels - channels // 2, kernel_size)

    def forward(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        h_f, c_f = self.forward_cell.init_state(skip)
        h_f, c_f = self.forward_cell(skip, h_f, c_f)
        h_f, c_f = self.forward_cell(up, h_f, c_f)
        h_b, c_b = self.backward_cell.init_state(up)
        h_b, c_b = self.backward_cell(up, h_b, c_b)
        h_b, c_b = self.backward_cell(skip, h_b, c_b)
        return torch.cat([h_f, h_b], dim=1)


class DecoderLevel(nn.Module):
    """
    One decoder level: transposed convolution (kernel = stride) to the skip resolution, optional attention gate on
    the skip (gated by the coarse input), skip fusion (concatenation or bidirectional ConvLSTM), then
    conv-norm-act, dropout, conv-norm-act.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the coarse decoder input.
        out_channels: channels of the skip and of the output.
        stride: upsampling factor per axis.
        kernel_size: kernel size of the two convolutions.
        act: activation (MONAI factory name or (name, args)).
        norm: normalization (MONAI factory name or (name, args)).
        dropout: dropout probability between the two convolutions (0 = none).
        attention: gate the skip (Oktay et al.).
        convlstm: fuse with a bidirectional ConvLSTM instead of concatenation.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: Sequence[int],
        kernel_size: Sequence[int] | int,
        act: tuple | str,
        norm: tuple | str,
        dropout: float,
        attention: bool,
        convlstm: bool,
    ) -> None:
        super().__init__()
        stride = tuple(int(s) for s in stride)
        self.up = Conv[Conv.CONVTRANS, spatial_dims](in_channels, out_channels, kernel_size=stride, stride=stride)
        self.gate: nn.Module
        if attention:
            self.gate = AttentionGate(spatial_dims, out_channels, in_channels, max(out_channels // 2, 1), stride)
        else:
            self.gate = IdentityGate()
        self.fusion: nn.Module
        if convlstm:
            self.fusion = BiConvLSTMFusion(spatial_dims, out_channels, kernel_size)
            fused = out_channels
        else:
            self.fusion = ConcatFusion()
            fused = 2 * out_channels
        self.conv1 = Convolution(spatial_dims, fused, out_channels, kernel_size=kernel_size, act=act, norm=norm)
        self.dropout: nn.Module
        if dropout > 0:
            self.dropout = Dropout[Dropout.DROPOUT, spatial_dims](p=dropout)
        else:
            self.dropout = nn.Identity()
        self.conv2 = Convolution(spatial_dims, out_channels, out_channels, kernel_size=kernel_size, act=act, norm=norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.up(x)
        skip = self.gate(skip, x)
        y = self.fusion(up, skip)
        return self.conv2(self.dropout(self.conv1(y)))
