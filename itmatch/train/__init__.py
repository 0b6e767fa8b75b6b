"""Training: recipes (``config``), batches (``loader``), the loop (``loop``) and data parallelism (``distributed``)."""

from itmatch.train.config import TrainConfig, load_config
from itmatch.train.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "load_config", "train"]
