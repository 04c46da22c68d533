"""Training curves: log.csv (long format: step, elapsed_s, tag, value) and, when installed,
TensorBoard event files beside it."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Mapping, Optional

__all__ = ["TrainLog", "LOG_HEADER"]

LOG_HEADER = ("step", "elapsed_s", "tag", "value")


class TrainLog:
    """Appends scalars to ``csv_path`` (a new file gets the header) and to TensorBoard in
    ``tensorboard_dir`` when that is given and ``torch.utils.tensorboard`` imports."""

    def __init__(self, csv_path: Path, tensorboard_dir: Optional[Path] = None, append: bool = False):
        new = not (append and csv_path.exists())
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(csv_path, "w" if new else "a", newline="", encoding="utf-8")
        self._csv = csv.writer(self._f)
        if new:
            self._csv.writerow(LOG_HEADER)
        self._tb = None
        if tensorboard_dir is not None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    from torch.utils.tensorboard import (
                        SummaryWriter,  # optional: needs tensorboard
                    )
                self._tb = SummaryWriter(str(tensorboard_dir))
            except ImportError:
                self._tb = None

    def log(self, step: int, elapsed: float, values: Mapping[str, object]) -> None:
        """One row per numeric value (None, strings and containers are skipped)."""
        for tag, v in values.items():
            if v is None or isinstance(v, (dict, list, str)):
                continue
            self._csv.writerow([step, f"{elapsed:.3f}", tag, f"{float(v):.8g}"])
            if self._tb is not None:
                self._tb.add_scalar(tag, float(v), step)
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
