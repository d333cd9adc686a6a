"""The bookkeeping of early stopping, saved with every training checkpoint of a fine-tune.

Every evaluation appends a record to the history; the lowest validation loss so far and its
step are kept, with the number of evaluations since it improved. The training losses since
the last evaluation are kept too, so a fine-tune resumed between two evaluations reports
the same mean training loss as an uninterrupted one. Everything is plain JSON (Python
floats round-trip through JSON exactly).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


@dataclasses.dataclass
class EarlyStopping:
    """Early-stopping state (see the module docstring).

    Attributes:
        patience: evaluations without improvement that stop the fine-tune.
        best_loss: the lowest validation loss so far (None before the first evaluation).
        best_step: the step of the best model (0 before the first evaluation).
        waited: evaluations since the best one.
        history: one record per evaluation.
        running: training losses since the last evaluation.
    """

    patience: int
    best_loss: float | None = None
    best_step: int = 0
    waited: int = 0
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    running: list[float] = dataclasses.field(default_factory=list)

    @property
    def should_stop(self) -> bool:
        """True after `patience` evaluations without improvement."""
        return self.waited >= self.patience

    def evaluated(self, record: dict[str, Any]) -> bool:
        """Add an evaluation `record` (with ``step`` and ``validation_loss``); True when it
        is the best so far."""
        self.history.append(record)
        self.running = []
        loss = record["validation_loss"]
        if loss < (math.inf if self.best_loss is None else self.best_loss):
            self.best_loss, self.best_step, self.waited = loss, record["step"], 0
            return True
        self.waited += 1
        return False

    def to_dict(self) -> dict[str, Any]:
        """The state as JSON values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EarlyStopping:
        """The state `to_dict` gave."""
        return cls(**values)
