# Copyright (c) the liverseg contributors. Licensed under the MIT License (see LICENSE).
"""Custom code of the ``liver_ct_seg`` MONAI bundle (networks, losses), referenced from the configs by ``_target_``."""
