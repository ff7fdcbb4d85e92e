"""liverseg: tooling around the liver / liver-tumor segmentation bundles and MONAI Label app.

Dataset conversion to nnU-Net's raw layout, dataset verification, synthetic CT phantoms,
preprocessing previews (and, later, evaluation, reports and benchmarks).
"""

from __future__ import annotations

__version__ = "0.1.0"

LABELS: dict[str, int] = {"background": 0, "liver": 1, "tumor": 2}
"""Label values used everywhere in the project (nnU-Net ``dataset.json`` convention)."""
