# Copyright (c) the liverseg contributors. Licensed under the MIT License (see LICENSE).
"""Losses of the ``liver_ct_seg`` bundle: deep supervision over stacked heads (nnU-Net weights) and plain CE."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.losses import DeepSupervisionLoss as _MonaiDeepSupervisionLoss

__all__ = ["ds_weights", "DeepSupervisionLoss", "CELoss"]


def ds_weights(n: int, zero_lowest: bool = False) -> list[float]:
    """
    nnU-Net deep-supervision weights for ``n`` heads, full resolution first: ``1 / 2**i`` normalized to sum 1,
    e.g. ``ds_weights(4) == [8/15, 4/15, 2/15, 1/15]``.

    nnU-Net (Isensee et al. 2021) puts a head on every decoder level and gives the lowest-resolution one weight 0
    (``zero_lowest=True``). The networks in :mod:`scripts.networks` leave that head out by default
    (``num_ds_heads = len(strides) - 1``), so the default ``zero_lowest=False`` over their heads gives exactly
    nnU-Net's weights; pass ``zero_lowest=True`` with ``num_ds_heads = len(strides)``.

    Args:
        n: number of heads, >= 1.
        zero_lowest: weight 0 for the last (lowest-resolution) head before normalizing (needs ``n >= 2``).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} must be a positive int (number of deep-supervision heads).")
    if zero_lowest and n < 2:
        raise ValueError(f"zero_lowest=True needs n >= 2 heads, got n={n}.")
    weights = [0.5**i for i in range(n)]
    if zero_lowest:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


class DeepSupervisionLoss(_MonaiDeepSupervisionLoss):
    """
    Deep-supervision wrapper for the stacked output of :class:`scripts.networks.LiverSegNet`: the input is either
    ``[B, C, *spatial]`` (one output, e.g. eval mode or no deep supervision: the plain loss) or
    ``[B, H, C, *spatial]`` (``H`` heads at full resolution, index 0 = full-resolution head), which is unbound along
    dim 1 and handed to :class:`monai.losses.DeepSupervisionLoss` with normalized weights. The target is
    ``[B, 1 or C, *spatial]``; ``input.dim() - target.dim()`` (0 or 1) tells the two cases apart.

    Args:
        loss: the loss per head, e.g. ``monai.losses.DiceCELoss(to_onehot_y=True, softmax=True)`` or
            :class:`CELoss`.
        weights: one weight per head (full resolution first), normalized to sum 1. Default: nnU-Net weights
            :func:`ds_weights` for the number of heads in the input.

    Example::

        loss = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True))
        loss(net(image), label)  # net in train mode: [B, H, C, ...]; label [B, 1, ...]
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float] | None = None) -> None:
        if weights is not None:
            weights = [float(w) for w in weights]
            if not weights or any(w < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError(f"weights={weights!r} must be non-negative with a positive sum.")
            total = sum(weights)
            weights = [w / total for w in weights]
        super().__init__(loss, weight_mode="exp", weights=weights)  # type: ignore[arg-type]

    def get_weights(self, levels: int = 1) -> list[float]:
        """Normalized weights for ``levels`` heads (given ``weights`` or :func:`ds_weights`)."""
        if self.weights is None:
            return ds_weights(levels)
        if len(self.weights) != levels:
            raise ValueError(f"weights={self.weights!r} has {len(self.weights)} entries, the input has {levels} heads.")
        return list(self.weights)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if not isinstance(input, torch.Tensor):
            raise ValueError(f"input must be a tensor [B, C, ...] or [B, H, C, ...], got {type(input).__name__}.")
        extra = input.dim() - target.dim()
        if extra == 0:
            return super().forward(input, target)
        if extra == 1:
            return super().forward(list(torch.unbind(input, dim=1)), target)
        raise ValueError(
            f"input shape {list(input.shape)} does not fit target shape {list(target.shape)}: expected "
            "[B, C, ...] or [B, H, C, ...] for a target [B, 1 or C, ...]."
        )


class CELoss(nn.Module):
    """
    Cross entropy on logits ``[B, C, *spatial]`` with an integer label target ``[B, 1, *spatial]`` (the channel dim
    is squeezed) or ``[B, *spatial]``. ``monai.losses.DiceCELoss(lambda_dice=0.0)`` gives the same value but also
    computes the Dice term.

    Args:
        weight: optional per-class weights (length C).
        label_smoothing: as in ``torch.nn.CrossEntropyLoss``.
        reduction: "mean", "sum" or "none".
    """

    def __init__(
        self, weight: Sequence[float] | None = None, label_smoothing: float = 0.0, reduction: str = "mean"
    ) -> None:
        super().__init__()
        w = None if weight is None else torch.as_tensor(weight, dtype=torch.float32)
        self.ce = nn.CrossEntropyLoss(weight=w, label_smoothing=label_smoothing, reduction=reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dim() == input.dim():
            if target.shape[1] != 1:
                raise ValueError(
                    f"CELoss expects a label target [B, 1, ...] or [B, ...], got shape {list(target.shape)}."
                )
            target = target[:, 0]
        return self.ce(input, target.long())
