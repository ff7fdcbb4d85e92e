"""Small transforms used by the bundle configs."""

from __future__ import annotations

import torch


def full_resolution_head(pred: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """Keep the full-resolution output of a deep-supervision prediction.

    In training mode a deep-supervision network returns, per item, ``[H, C, *spatial]`` (head 0 = full resolution);
    other networks return ``[C, *spatial]``, which is passed through unchanged.
    """
    if pred.ndim == spatial_dims + 2:
        return pred[0]
    if pred.ndim != spatial_dims + 1:
        raise ValueError(f"expected a prediction with {spatial_dims + 1} or {spatial_dims + 2} dims, got {pred.ndim}")
    return pred
