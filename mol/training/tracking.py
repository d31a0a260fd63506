"""Experiment tracking, imported only when asked: TensorBoard or Weights & Biases."""

from __future__ import annotations

from pathlib import Path

from mol._errors import ConfigError

__all__ = ["make_tracker"]


class _TensorBoard:
    def __init__(self, log_dir: Path, config: dict) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ConfigError(
                "report_to='tensorboard' needs the tensorboard package: "
                "pip install 'project-mango[track]'"
            ) from exc
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.writer.add_text("config", repr(config))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, log_dir: Path, config: dict, run_name: str) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise ConfigError(
                "report_to='wandb' needs the wandb package: pip install 'project-mango[track]'"
            ) from exc
        self.run = wandb.init(project="mol", name=run_name, config=config, dir=str(log_dir))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


def make_tracker(report_to: str | None, output_dir: Path, run_name: str, config: dict):
    """A tracker with ``log(metrics, step)`` and ``close()``, or None when ``report_to`` is None."""
    if report_to is None:
        return None
    log_dir = output_dir / "runs"
    log_dir.mkdir(parents=True, exist_ok=True)
    if report_to == "tensorboard":
        return _TensorBoard(log_dir, config)
    if report_to == "wandb":
        return _Wandb(log_dir, config, run_name)
    raise ConfigError(f"report_to must be None, 'tensorboard' or 'wandb', got {report_to!r}")
