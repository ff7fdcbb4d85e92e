"""Golden output: the shipped default weights on the shipped held-out sample phantoms.

The bars are the issue's targets for the default bundle (liver Dice >= 0.95, tumor Dice >= 0.75, global Dice over
the four held-out phantoms, scored in each case's own geometry by ``liverseg evaluate``).
"""

from __future__ import annotations

import sys

import pytest

from tests.conftest import BUNDLE, REPO

sys.path.insert(0, str(BUNDLE))

SAMPLE = REPO / "sample-data" / "Dataset001_LiverPhantom"
WEIGHTS = BUNDLE / "models" / "model.pt"
LIVER_DICE_BAR = 0.95
TUMOR_DICE_BAR = 0.75


@pytest.mark.slow
def test_shipped_weights_segment_the_held_out_phantoms(tmp_path):
    from monai.bundle import ConfigWorkflow

    from liverseg.evaluation import evaluate_folder

    assert WEIGHTS.is_file(), f"the default bundle must ship its weights at {WEIGHTS}"
    wf = ConfigWorkflow(
        config_file=str(BUNDLE / "configs" / "inference.json"),
        meta_file=str(BUNDLE / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type="infer",
        bundle_root=str(BUNDLE),
        dataset_dir=str(SAMPLE),
        output_dir=str(tmp_path / "pred"),
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    summary = evaluate_folder(tmp_path / "pred", SAMPLE / "labelsTs", out_dir=tmp_path / "eval")
    assert summary["num_cases"] == 4, summary
    liver, tumor = summary["global_dice"]["liver"], summary["global_dice"]["tumor"]
    assert liver >= LIVER_DICE_BAR, summary
    assert tumor >= TUMOR_DICE_BAR, summary
