"""Where a training run writes: the protocol the trainer writes through.

The trainer computes; it does not know the layout of a run folder. It hands what it produces to a
:class:`RunSink`, which :class:`feature3dgs.run.RunDir` implements (so the run folder has one
writer). Without a sink (``run=None``) nothing is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager, Mapping, Optional, Protocol

if TYPE_CHECKING:  # annotations only
    from feature3dgs.model.gaussians import GaussianModel
    from feature3dgs.training.config import TrainConfig
    from feature3dgs.training.log import TrainLog

__all__ = ["RunSink"]


class RunSink(Protocol):
    """The files of a training run."""

    def prepare(self, resume: bool) -> list[str]:
        """Before the run writes: check the folder, recover from an interrupted run's leftovers;
        returns what was done (one line each)."""

    def transaction(self) -> ContextManager[Any]:
        """A block whose writes take effect together (the final outputs)."""

    def write_config(self, config: "TrainConfig", scene_info: Mapping[str, Any], device: str) -> None:
        """The resolved config and a description of the scene (config.json)."""

    def open_log(self, tensorboard: bool, append: bool) -> "TrainLog":
        """The training curves (log.csv, TensorBoard)."""

    def save_checkpoint(self, state: dict, step: int, keep: int) -> Path:
        """A checkpoint of ``step``, keeping the newest ``keep`` of this run's."""

    def latest_checkpoint(self) -> Optional[Path]:
        """The newest checkpoint, or None."""

    def render_dir(self, split: str) -> Path:
        """The folder the final renders of ``split`` go to."""

    def write_model(self, model: "GaussianModel") -> Path:
        """The trained Gaussians (point_cloud.ply)."""

    def write_metrics(self, metrics: Mapping[str, Any]) -> None:
        """The final metrics (metrics.json)."""
