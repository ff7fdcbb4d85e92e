# Copyright (c) the liverseg contributors. Licensed under the Apache License, Version 2.0.
"""Custom code of the ``liver_ct_seg`` MONAI bundle (networks, losses), referenced from the configs by ``_target_``."""
