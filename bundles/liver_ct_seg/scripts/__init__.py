# Copyright (c) the liverseg contributors. Licensed under the MIT License (see LICENSE).
"""Custom code of the ``liver_ct_seg`` MONAI bundle (networks, losses), referenced from the configs by ``_target_``."""

from . import runs as _runs

# under `python -m monai.bundle`, a failed run prints its cause in a few lines, the traceback goes to a log file
_runs.install_short_errors()
