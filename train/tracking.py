"""Per-step metrics to the experiment trackers the recipe names (``report_to``), through their own writers:
TensorBoard event files (``torch.utils.tensorboard``) and MLflow runs in a local file store. A tracker whose
package is missing is skipped with a warning rather than failing a training run."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class Trackers:
    def __init__(self, log_dir: Path, report_to: list[str], params: dict[str, Any]) -> None:
        self.writers: list[Any] = []
        self.mlflow: Any = None
        if "tensorboard" in report_to:
            if importlib.util.find_spec("tensorboard") is None:
                log.warning("report_to: tensorboard is not installed (pip install tensorboard); not logging to it")
            else:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(log_dir=str(log_dir / "tensorboard"))
                writer.add_text("params", f"```\n{params}\n```")
                self.writers.append(writer)
        if "mlflow" in report_to:
            if importlib.util.find_spec("mlflow") is None:
                log.warning("report_to: mlflow is not installed (pip install mlflow); not logging to it")
            else:
                import mlflow

                mlflow.set_tracking_uri((log_dir / "mlruns").resolve().as_uri())
                mlflow.set_experiment("gristmill-train")
                self.mlflow = mlflow.start_run()
                mlflow.log_params({k: str(v) for k, v in params.items()})

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for writer in self.writers:
            for key, value in metrics.items():
                writer.add_scalar(key, value, step)
        if self.mlflow is not None:
            import mlflow

            mlflow.log_metrics(metrics, step=step)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
        if self.mlflow is not None:
            import mlflow

            mlflow.end_run()
