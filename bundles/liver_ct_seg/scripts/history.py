"""Per-epoch training history as CSV (``history.csv`` in the output folder), for training curves.

The handler is attached to the trainer, after its ``ValidationHandler``, and reads the validation evaluator's
metrics. Each trainer epoch writes one row: epoch, mean training loss, learning rate, elapsed seconds, and the
validation metrics of that epoch when a validation ran. The file is rewritten atomically after every epoch, so an
interrupted run keeps every finished epoch. Only rank 0 writes under ``torch.distributed``.
"""

from __future__ import annotations

import csv
import math
import os
import time
from typing import Any, Sequence

import torch
from monai.engines import Trainer
from monai.handlers import from_engine

HISTORY_FILE = "history.csv"


def _is_writer() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


def _scalars(name: str, value: Any, class_names: Sequence[str]) -> dict[str, float]:
    """A metric value as named floats: a per-class vector becomes ``{name}_{class}`` columns."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().flatten().tolist()
        value = value[0] if len(value) == 1 else value
    if isinstance(value, (list, tuple)):
        names = list(class_names) if len(class_names) == len(value) else [str(i) for i in range(len(value))]
        return {f"{name}_{n}": float(v) for n, v in zip(names, value, strict=True)}
    try:
        return {name: float(value)}
    except (TypeError, ValueError):
        return {}


class TrainingHistory:
    """Collects the mean training loss of each epoch and the validation metrics, and writes them to CSV.

    Attach it to the trainer after its ``ValidationHandler`` (handlers run in the order they were attached), so the
    validation of an epoch has finished when the row of that epoch is written.

    Args:
        output_dir: folder of ``history.csv`` (created if missing).
        validator: the validation evaluator; its metrics are recorded for the epochs it ran (``ValidationHandler``
            runs it with the trainer's epoch as its own).
        class_names: names for the entries of per-class metrics (background excluded), e.g. ``["liver", "tumor"]``.
        loss_key: key of the loss in the trainer's output.
    """

    def __init__(
        self, output_dir: str, validator=None, class_names: Sequence[str] = ("liver", "tumor"), loss_key: str = "loss"
    ):
        self.path = os.path.join(output_dir, HISTORY_FILE)
        self.validator = validator
        self.class_names = list(class_names)
        self.loss_key = loss_key
        self.rows: dict[int, dict[str, float]] = {}
        self._losses: list[float] = []
        self._start = time.perf_counter()

    def attach(self, engine) -> None:
        from ignite.engine import Events

        if not isinstance(engine, Trainer):
            raise TypeError(f"TrainingHistory attaches to a trainer, got {type(engine).__name__}")
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)

    def _started(self, engine) -> None:
        self._start = time.perf_counter()

    def _iteration(self, engine) -> None:
        loss = from_engine([self.loss_key], first=True)(engine.state.output)
        loss = loss[0] if isinstance(loss, (list, tuple)) else loss
        self._losses.append(float(loss.item() if isinstance(loss, torch.Tensor) else loss))

    def _epoch(self, engine) -> None:
        epoch = engine.state.epoch
        row = self.rows.setdefault(epoch, {"epoch": epoch})
        row["train_loss"] = sum(self._losses) / len(self._losses) if self._losses else math.nan
        optimizer = getattr(engine, "optimizer", None)
        row["learning_rate"] = float(optimizer.param_groups[0]["lr"]) if optimizer is not None else math.nan
        row["elapsed_s"] = time.perf_counter() - self._start
        state = getattr(self.validator, "state", None)
        if state is not None and getattr(state, "epoch", None) == epoch:  # validation ran at this epoch
            for name, value in state.metrics.items():
                row.update(_scalars(name if name.startswith("val_") else f"val_{name}", value, self.class_names))
        self._losses = []
        self.write()

    def write(self) -> None:
        if not _is_writer() or not self.rows:
            return
        columns = ["epoch", "train_loss", "learning_rate", "elapsed_s"]
        for row in self.rows.values():
            columns += [c for c in row if c not in columns]
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            for epoch in sorted(self.rows):
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in self.rows[epoch].items()})
        os.replace(tmp, self.path)


def read_history(path: str) -> list[dict[str, float]]:
    """Rows of a ``history.csv`` as dicts of floats (empty cells left out)."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
