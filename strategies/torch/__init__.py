"""In-process eager PyTorch: the baseline every other strategy is compared with."""

from strategies.torch.strategy import TorchEager

__all__ = ["TorchEager"]
