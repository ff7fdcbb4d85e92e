"""Epistemic active learning picks the case unlike the training data.

The server runs the shipped default weights (trained on portal-venous phantoms, liver ~90-130 HU). The datastore
holds two held-out sample phantoms, one more ordinary phantom, and the same anatomy with the liver 50 HU darker
(as in an unenhanced or late-phase scan, which the model never saw). ``next_sample("epistemic")`` must return that
case, by a clear margin of its test-time-flip entropy over every ordinary case; once it is labelled, the next pick
is an ordinary case.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from monailabel.client import MONAILabelClient

from liverseg.imageio import write_nifti
from liverseg.phantom import generate_phantom
from tests.apps.conftest import Server
from tests.conftest import BUNDLE, REPO

SAMPLE_TS = REPO / "sample-data" / "Dataset001_LiverPhantom" / "imagesTs"
OOD_SEED = 700  # not a seed of the sample data nor of the shipped weights' training set (dataset seed 1000)
LIVER_SHIFT_HU = -50.0
# the OOD entropy must exceed every ordinary case's by 30 %. Measured (shipped weights): unenhanced 0.544; ordinary
# 0.262 (same anatomy, seed 700), held-out sample phantoms 0.254 / 0.242 / 0.233 / 0.331
MARGIN = 1.3


@pytest.fixture(scope="module")
def ood_server(tmp_path_factory):
    studies = tmp_path_factory.mktemp("ood") / "imagesTs"
    studies.mkdir()
    for f in sorted(SAMPLE_TS.glob("*_0000.nii.gz"))[:2]:  # two held-out sample phantoms (each costs 4 passes)
        shutil.copy2(f, studies / f.name)
    ph = generate_phantom(OOD_SEED, shape=(150, 150, 60))
    liver = ph.label > 0
    write_nifti(studies / f"ordinary_{OOD_SEED}_0000.nii.gz", ph.image, ph.affine)
    darker = np.where(liver, ph.image.astype(np.float32) + LIVER_SHIFT_HU, ph.image).round().astype(np.int16)
    write_nifti(studies / f"unenhanced_{OOD_SEED}_0000.nii.gz", darker, ph.affine)
    srv = Server(studies, tmp_path_factory.mktemp("ood_serve"), BUNDLE).start()
    yield srv
    srv.stop()


def test_epistemic_picks_the_out_of_distribution_case(ood_server):
    client = MONAILabelClient(ood_server.url)
    sample = client.next_sample("epistemic", {})
    objects = client.datastore()["objects"]
    scores = {i: o["image"]["info"]["epistemic_entropy"] for i, o in objects.items()}
    assert len(scores) == 4
    ood = f"unenhanced_{OOD_SEED}"
    assert sample["id"] == ood, scores
    ordinary = {i: s for i, s in scores.items() if i != ood}
    assert scores[ood] > MARGIN * max(ordinary.values()), scores
    # labelled, it leaves the pool: the next pick is the most uncertain ordinary case
    label = ood_server.workdir / "ood_label.nii.gz"
    ph = generate_phantom(OOD_SEED, shape=(150, 150, 60))
    write_nifti(label, ph.label, ph.affine)
    client.save_label(ood, str(label), tag="final")
    nxt = client.next_sample("epistemic", {})
    assert nxt["id"] == max(ordinary, key=ordinary.get)
