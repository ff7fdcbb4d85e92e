"""Active-learning strategies of the liver app: ``random``, ``first`` (monailabel's) and ``epistemic``."""

from __future__ import annotations

import logging
import time
from typing import Any, Dict

from lib.scoring import ENTROPY_KEY, TS_KEY, EpistemicTTAScoring, model_timestamp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

logger = logging.getLogger(__name__)


class EpistemicStrategy(Strategy):
    """The unlabelled image the model is least certain about (highest ``epistemic_entropy``).

    Images not yet scored with the current weights are scored first (test-time flips, 4 forward passes each; see
    :mod:`lib.scoring`), so the first request after a training can take a while on a CPU; ``POST
    /scoring/epistemic`` does the same work in the background. Among equal scores, the image served least recently
    by this strategy wins.
    """

    def __init__(self, scoring: EpistemicTTAScoring):
        super().__init__("Most uncertain unlabelled image (test-time flip ensemble entropy)")
        self.scoring = scoring

    def __call__(self, request, datastore: Datastore) -> Dict[str, Any] | None:
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        task = self.scoring.task(request)
        ts = model_timestamp(task)
        if any(datastore.get_image_info(i).get(TS_KEY) != ts for i in images):
            self.scoring({"model": request.get("model"), "device": request.get("device")}, datastore)
        now = int(time.time())
        strategy = request.get("strategy", "epistemic")

        def key(image_id: str):
            info = datastore.get_image_info(image_id)
            served = info.get("strategy", {}).get(strategy, {}).get("ts", 0)
            return (float(info.get(ENTROPY_KEY, 0.0)), now - served)

        best = max(sorted(images), key=key)
        score = float(datastore.get_image_info(best).get(ENTROPY_KEY, 0.0))
        logger.info("epistemic: selected %s (entropy %.5f)", best, score)
        return {"id": best, ENTROPY_KEY: score}
