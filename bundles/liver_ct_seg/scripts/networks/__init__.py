# Copyright (c) the liverseg contributors. Licensed under the MIT License (see LICENSE).
"""Networks of the ``liver_ct_seg`` bundle: ``"_target_": "scripts.networks.DALUNet"`` etc."""

from __future__ import annotations

from .blocks import AttentionGate, BiConvLSTMFusion, ConcatFusion, ConvLSTMCell, DecoderLevel, IdentityGate
from .liversegnet import AttentionUNet, AttentionUNetDS, DALUNet, LiverSegNet, UNet, set_mc_dropout

__all__ = [
    "LiverSegNet",
    "UNet",
    "AttentionUNet",
    "AttentionUNetDS",
    "DALUNet",
    "set_mc_dropout",
    "AttentionGate",
    "IdentityGate",
    "ConcatFusion",
    "ConvLSTMCell",
    "BiConvLSTMFusion",
    "DecoderLevel",
]
