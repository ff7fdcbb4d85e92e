# Copyright (c) the liverseg contributors. Licensed under the MIT License (see LICENSE).
"""U-Net family for liver / liver-tumor segmentation: U-Net, Attention U-Net, AU-Net + deep supervision, DALU-Net."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv

from .blocks import ConvLSTMCell, DecoderLevel, interp_mode
from .channels_last import use_channels_last_cpu_inference

__all__ = ["LiverSegNet", "UNet", "AttentionUNet", "AttentionUNetDS", "DALUNet", "set_mc_dropout"]

logger = logging.getLogger(__name__)

DEFAULT_ACT = ("LeakyReLU", {"negative_slope": 0.01, "inplace": True})
_DROPOUT_NAMES = ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _per_axis(value: object, spatial_dims: int, name: str) -> tuple[int, ...]:
    """``value`` (int or sequence of ``spatial_dims`` ints) as a per-axis tuple; ValueError naming ``name``."""
    if _is_int(value):
        return (int(value),) * spatial_dims  # type: ignore[call-overload]
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != spatial_dims or not all(_is_int(v) for v in value):
            raise ValueError(
                f"{name}={tuple(value)!r} must be an int or {spatial_dims} ints (one per axis, spatial_dims="
                f"{spatial_dims})."
            )
        return tuple(int(v) for v in value)
    raise ValueError(f"{name}={value!r} must be an int or a sequence of {spatial_dims} ints.")


class LiverSegNet(nn.Module):
    """
    Configurable U-Net family in 2D and 3D: plain U-Net, attention gates on the skips, deep supervision and
    bidirectional ConvLSTM skip fusion, switched on independently. The named variants are
    :class:`UNet`, :class:`AttentionUNet`, :class:`AttentionUNetDS` and :class:`DALUNet`.

    Layout (``n = len(channels)`` resolution levels):

    - encoder level 0: two conv-norm-act (stride 1); level ``i > 0``: a conv-norm-act with stride ``strides[i-1]``
      (downsampling by strided convolution) and a conv-norm-act with stride 1. The last level is the bottleneck.
    - decoder level (``n - 1`` of them, coarse to fine): transposed convolution (kernel = stride) to the skip
      resolution; skip optionally gated by an attention gate (gating signal: the coarse decoder input); fusion by
      concatenation or by a bidirectional ConvLSTM over the 2-step sequence ``[skip, upsampled]``; conv-norm-act,
      dropout, conv-norm-act.
    - a 1x1 convolution head at full resolution; with deep supervision also 1x1 heads at the next
      ``num_ds_heads - 1`` coarser decoder levels.

    Input size: every spatial size must be divisible by the product of the strides on that axis
    (16 per axis for the default ``strides``; e.g. ``strides=((2, 2, 1),) * 4`` with 3D input needs
    multiples of (16, 16, 1)). Other sizes raise ValueError in ``forward``.

    Output: ``[B, out_channels, *spatial]`` logits in eval mode and whenever ``deep_supervision`` is False.
    In training mode with deep supervision: ``[B, H, out_channels, *spatial]``, the ``H = num_ds_heads`` heads
    linearly upsampled to full resolution, stacked along dim 1, index 0 = full-resolution head. Use
    :class:`scripts.losses.DeepSupervisionLoss` as the loss (nnU-Net weights, see :func:`scripts.losses.ds_weights`).

    MC dropout: ``dropout > 0`` puts dropout between the two convolutions of each decoder level. It follows the
    usual train/eval switch; to keep it on at inference call ``set_mc_dropout(net, True)`` (or
    ``net.set_mc_dropout(True)``) after ``net.eval()``. This works on TorchScript-scripted models too.

    CPU inference (3D): the convolutions and instance norms are :mod:`scripts.networks.channels_last` modules,
    which run oneDNN on channels-last activations when autograd is off (about 1.5 x faster on 2 cores, same
    parameters and state dict; training and GPUs are unaffected).

    References:
        - Ronneberger et al. (2015), "U-Net: Convolutional Networks for Biomedical Image Segmentation",
          MICCAI, https://arxiv.org/abs/1505.04597.
        - Oktay et al. (2018), "Attention U-Net: Learning Where to Look for the Pancreas",
          https://arxiv.org/abs/1804.03999.
        - Azad et al. (2019), "Bi-Directional ConvLSTM U-Net with Densley Connected Convolutions" (BCDU-Net),
          ICCV Workshops, https://arxiv.org/abs/1909.00166.
        - Jeong et al. (2022), "Deep learning-based decision support system for the diagnosis of liver tumors"
          (DALU-Net), Scientific Reports. No public code: this is our reading (attention + deep supervision +
          ConvLSTM skip fusion); BCDU-Net's densely connected bottleneck is not included.
        - Isensee et al. (2021), "nnU-Net: a self-configuring method for deep learning-based biomedical image
          segmentation", Nature Methods (deep-supervision weighting).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels (1 for CT).
        out_channels: output classes (3 for background / liver / tumor).
        channels: feature channels per resolution level, top level first; at least 2 levels.
        strides: downsampling factor between consecutive levels, ``len(channels) - 1`` entries; each an int or a
            per-axis sequence of ``spatial_dims`` ints (anisotropic, e.g. ``(2, 2, 1)`` to keep thick slices).
        kernel_size: odd convolution kernel size, int or per-axis.
        act: activation, MONAI factory name or ``(name, kwargs)``.
        norm: normalization, MONAI factory name or ``(name, kwargs)``.
        dropout: dropout probability in the decoder levels, in [0, 1).
        attention: attention gates on the skips.
        deep_supervision: extra 1x1 heads on coarser decoder levels, returned stacked in training mode.
        convlstm: bidirectional ConvLSTM skip fusion (BCDU-Net) instead of concatenation.
        num_ds_heads: number of heads (including the full-resolution one) with deep supervision, 1 to
            ``len(strides)``. Default ``max(len(strides) - 1, 1)``: every decoder level except the lowest-resolution
            one, which nnU-Net weights with 0 anyway.

    Example::

        net = LiverSegNet(3, 1, 3, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, (2, 2, 1)),
                          attention=True, deep_supervision=True, convlstm=True)
        net.train()
        net(torch.zeros(1, 1, 96, 96, 48)).shape  # [1, 3, 3, 96, 96, 48]: 3 heads
        net.eval()
        net(torch.zeros(1, 1, 96, 96, 48)).shape  # [1, 3, 96, 96, 48]
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        strides: Sequence[Sequence[int] | int] = (2, 2, 2, 2),
        kernel_size: Sequence[int] | int = 3,
        act: tuple | str = DEFAULT_ACT,
        norm: tuple | str = "instance",
        dropout: float = 0.0,
        attention: bool = False,
        deep_supervision: bool = False,
        convlstm: bool = False,
        num_ds_heads: int | None = None,
    ) -> None:
        super().__init__()
        if not _is_int(spatial_dims) or spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims={spatial_dims!r} must be 2 or 3.")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive int.")
        if isinstance(channels, str) or not isinstance(channels, Sequence) or len(channels) < 2:
            raise ValueError(f"channels={channels!r} must be a sequence of at least 2 positive ints.")
        if not all(_is_int(c) and c > 0 for c in channels):
            raise ValueError(f"channels={tuple(channels)!r} must contain positive ints only.")
        if convlstm and min(channels) < 2:
            raise ValueError(f"channels={tuple(channels)!r}: convlstm=True needs at least 2 channels per level.")
        if isinstance(strides, str) or not isinstance(strides, Sequence):
            raise ValueError(f"strides={strides!r} must be a sequence of len(channels) - 1 = {len(channels) - 1}.")
        if len(strides) != len(channels) - 1:
            raise ValueError(
                f"strides={tuple(strides)!r} has {len(strides)} entries; len(channels) - 1 = {len(channels) - 1} "
                f"needed for channels={tuple(channels)!r}."
            )
        stride_list = [_per_axis(s, spatial_dims, f"strides[{i}]") for i, s in enumerate(strides)]
        for i, s in enumerate(stride_list):
            if min(s) < 1:
                raise ValueError(f"strides[{i}]={s!r} must be >= 1 on every axis.")
        kernel = _per_axis(kernel_size, spatial_dims, "kernel_size")
        if any(k < 1 or k % 2 == 0 for k in kernel):
            raise ValueError(f"kernel_size={kernel_size!r} must be odd and positive on every axis.")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout!r} must be a number in [0, 1).")
        n_dec = len(stride_list)
        if num_ds_heads is not None:
            if not deep_supervision:
                raise ValueError(f"num_ds_heads={num_ds_heads!r} given but deep_supervision=False.")
            if not _is_int(num_ds_heads) or not 1 <= num_ds_heads <= n_dec:
                raise ValueError(
                    f"num_ds_heads={num_ds_heads!r} must be an int in [1, {n_dec}] (one per decoder level at most)."
                )
        n_heads = (num_ds_heads if num_ds_heads is not None else max(n_dec - 1, 1)) if deep_supervision else 1

        self.spatial_dims = int(spatial_dims)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.channels = tuple(int(c) for c in channels)
        self.strides = tuple(stride_list)
        self.kernel_size = kernel
        self.attention = bool(attention)
        self.deep_supervision = bool(deep_supervision)
        self.convlstm = bool(convlstm)
        self.num_ds_heads = int(n_heads)
        self.dropout_p = float(dropout)
        self.mode = interp_mode(spatial_dims)
        divisor = [1] * spatial_dims
        for s in stride_list:
            divisor = [d * a for d, a in zip(divisor, s, strict=True)]
        self.size_divisor: list[int] = divisor

        self.encoder = nn.ModuleList(
            [
                self._get_encoder_level(
                    self.channels[i - 1] if i > 0 else in_channels,
                    self.channels[i],
                    stride_list[i - 1] if i > 0 else (1,) * spatial_dims,
                    act,
                    norm,
                )
                for i in range(len(self.channels))
            ]
        )
        self.decoder = nn.ModuleList(
            [
                self._get_decoder_level(self.channels[i + 1], self.channels[i], stride_list[i], act, norm, dropout)
                for i in reversed(range(n_dec))
            ]
        )
        self.head = self._get_head(self.channels[0], out_channels)
        # ds_heads[k] reads the decoder level at resolution level k + 1 (channels[k + 1]).
        self.ds_heads = nn.ModuleList([self._get_head(self.channels[k + 1], out_channels) for k in range(n_heads - 1)])
        self.apply(self._init_weights)
        if self.spatial_dims == 3:
            use_channels_last_cpu_inference(self)

    # --- hooks for subclasses -------------------------------------------------------------------------------
    def _get_encoder_level(
        self, in_channels: int, out_channels: int, stride: Sequence[int], act: tuple | str, norm: tuple | str
    ) -> nn.Module:
        """Two conv-norm-act; the first one carries the downsampling stride."""
        return nn.Sequential(
            Convolution(
                self.spatial_dims,
                in_channels,
                out_channels,
                strides=stride,
                kernel_size=self.kernel_size,
                act=act,
                norm=norm,
            ),
            Convolution(
                self.spatial_dims,
                out_channels,
                out_channels,
                strides=1,
                kernel_size=self.kernel_size,
                act=act,
                norm=norm,
            ),
        )

    def _get_decoder_level(
        self,
        in_channels: int,
        out_channels: int,
        stride: Sequence[int],
        act: tuple | str,
        norm: tuple | str,
        dropout: float,
    ) -> nn.Module:
        """Upsample, (gated) skip fusion, two conv-norm-act; see :class:`DecoderLevel`."""
        return DecoderLevel(
            self.spatial_dims,
            in_channels,
            out_channels,
            stride,
            self.kernel_size,
            act,
            norm,
            dropout,
            attention=self.attention,
            convlstm=self.convlstm,
        )

    def _get_head(self, in_channels: int, out_channels: int) -> nn.Module:
        """1x1 convolution to class logits."""
        return Conv[Conv.CONV, self.spatial_dims](in_channels, out_channels, kernel_size=1, bias=True)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """He init (leaky ReLU slope 0.01, as nnU-Net) for convolutions; the ConvLSTM gates keep forget bias 1."""
        if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(module.weight, a=1e-2)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        if isinstance(module, ConvLSTMCell):
            with torch.no_grad():
                h = module.hidden_channels
                module.gates.bias[h : 2 * h].fill_(1.0)

    # --- API -------------------------------------------------------------------------------------------------
    def set_mc_dropout(self, enabled: bool = True) -> int:
        """Keep the decoder dropout active in eval mode (MC dropout); returns the number of dropout layers."""
        return set_mc_dropout(self, enabled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                "expected input [B, C, *spatial] with {} spatial dims, got shape {}.".format(
                    self.spatial_dims, list(x.shape)
                )
            )
        for d in range(self.spatial_dims):
            if x.shape[d + 2] % self.size_divisor[d] != 0:
                raise ValueError(
                    "input spatial shape {} is not divisible by the product of the strides {} on every axis.".format(
                        list(x.shape[2:]), self.size_divisor
                    )
                )
        features: list[torch.Tensor] = []
        for level in self.encoder:
            x = level(x)
            features.append(x)
        decoded: list[torch.Tensor] = []
        n_feat = len(features)
        for j, level in enumerate(self.decoder):
            x = level(x, features[n_feat - 2 - j])
            decoded.append(x)
        out = self.head(x)
        if not (self.training and self.deep_supervision):
            return out
        n_dec = len(decoded)
        heads: list[torch.Tensor] = [out]
        for k, head in enumerate(self.ds_heads):
            y = head(decoded[n_dec - 2 - k])
            heads.append(F.interpolate(y, size=out.shape[2:], mode=self.mode, align_corners=False))
        return torch.stack(heads, dim=1)


class UNet(LiverSegNet):
    """
    Plain U-Net (Ronneberger et al. 2015, https://arxiv.org/abs/1505.04597) in the layout of :class:`LiverSegNet`:
    no attention, no deep supervision, concatenation skips. Args as :class:`LiverSegNet` (without the switches).

    Example::

        net = UNet(spatial_dims=3, in_channels=1, out_channels=3).eval()
        net(torch.zeros(1, 1, 96, 96, 96)).shape  # [1, 3, 96, 96, 96]
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        strides: Sequence[Sequence[int] | int] = (2, 2, 2, 2),
        kernel_size: Sequence[int] | int = 3,
        act: tuple | str = DEFAULT_ACT,
        norm: tuple | str = "instance",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(
            spatial_dims,
            in_channels,
            out_channels,
            channels,
            strides,
            kernel_size,
            act,
            norm,
            dropout,
            attention=False,
            deep_supervision=False,
            convlstm=False,
        )


class AttentionUNet(LiverSegNet):
    """
    Attention U-Net (Oktay et al. 2018, https://arxiv.org/abs/1804.03999): U-Net with additive attention gates on
    every skip, gated by the coarser decoder feature. Args as :class:`LiverSegNet` (without the switches).

    Example::

        net = AttentionUNet(spatial_dims=3, in_channels=1, out_channels=3).eval()
        net(torch.zeros(1, 1, 96, 96, 96)).shape  # [1, 3, 96, 96, 96]
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        strides: Sequence[Sequence[int] | int] = (2, 2, 2, 2),
        kernel_size: Sequence[int] | int = 3,
        act: tuple | str = DEFAULT_ACT,
        norm: tuple | str = "instance",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(
            spatial_dims,
            in_channels,
            out_channels,
            channels,
            strides,
            kernel_size,
            act,
            norm,
            dropout,
            attention=True,
            deep_supervision=False,
            convlstm=False,
        )


class AttentionUNetDS(LiverSegNet):
    """
    Attention U-Net with nnU-Net-style deep supervision (Oktay et al. 2018; Isensee et al. 2021). In training mode
    returns ``[B, H, C, *spatial]`` (see :class:`LiverSegNet`), in eval mode ``[B, C, *spatial]``.
    Args as :class:`LiverSegNet` (without the switches), plus ``num_ds_heads``.

    Example::

        net = AttentionUNetDS(spatial_dims=3, in_channels=1, out_channels=3)
        net(torch.zeros(1, 1, 64, 64, 64)).shape         # train: [1, 3, 3, 64, 64, 64]
        net.eval()(torch.zeros(1, 1, 64, 64, 64)).shape  # eval: [1, 3, 64, 64, 64]
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        strides: Sequence[Sequence[int] | int] = (2, 2, 2, 2),
        kernel_size: Sequence[int] | int = 3,
        act: tuple | str = DEFAULT_ACT,
        norm: tuple | str = "instance",
        dropout: float = 0.0,
        num_ds_heads: int | None = None,
    ) -> None:
        super().__init__(
            spatial_dims,
            in_channels,
            out_channels,
            channels,
            strides,
            kernel_size,
            act,
            norm,
            dropout,
            attention=True,
            deep_supervision=True,
            convlstm=False,
            num_ds_heads=num_ds_heads,
        )


class DALUNet(LiverSegNet):
    """
    DALU-Net (Jeong et al. 2022, Scientific Reports), as read from the paper's ablation (no public code): Attention
    U-Net (Oktay et al. 2018) + deep supervision (nnU-Net weights, Isensee et al. 2021) + bidirectional ConvLSTM
    skip fusion as in BCDU-Net (Azad et al. 2019). Output as :class:`AttentionUNetDS`.
    Args as :class:`LiverSegNet` (without the switches), plus ``num_ds_heads``.

    Example::

        net = DALUNet(spatial_dims=3, in_channels=1, out_channels=3, strides=(2, 2, 2, (2, 2, 1))).eval()
        net(torch.zeros(1, 1, 96, 96, 48)).shape  # [1, 3, 96, 96, 48]
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        strides: Sequence[Sequence[int] | int] = (2, 2, 2, 2),
        kernel_size: Sequence[int] | int = 3,
        act: tuple | str = DEFAULT_ACT,
        norm: tuple | str = "instance",
        dropout: float = 0.0,
        num_ds_heads: int | None = None,
    ) -> None:
        super().__init__(
            spatial_dims,
            in_channels,
            out_channels,
            channels,
            strides,
            kernel_size,
            act,
            norm,
            dropout,
            attention=True,
            deep_supervision=True,
            convlstm=True,
            num_ds_heads=num_ds_heads,
        )


def set_mc_dropout(model: nn.Module, enabled: bool = True) -> int:
    """
    Switch the dropout layers of ``model`` to train mode (``enabled=True``: MC dropout at inference) or to eval
    mode, leaving every other layer as it is. Works on eager and TorchScript-scripted models. Call it after
    ``model.eval()`` (which switches dropout off again).

    Returns:
        the number of dropout layers switched (0 means the model has no dropout, e.g. ``dropout=0``).
    """
    count = 0
    for module in model.modules():
        if isinstance(module, torch.jit.RecursiveScriptModule):
            is_dropout = module.original_name in _DROPOUT_NAMES
        else:
            is_dropout = isinstance(module, nn.modules.dropout._DropoutNd)
        if is_dropout:
            module.train(enabled)
            count += 1
    if count == 0:
        logger.warning("set_mc_dropout: %s has no dropout layers (dropout=0?); nothing switched.", type(model).__name__)
    return count
