"""Bring-your-own models used by the tests: factories a user would write in their own package."""

from __future__ import annotations

import torch
from torch import nn

TWO_INPUT_SPEC = "features:float32[batch,8]=-2..2; ids:int64[batch,4]=0..50"


class TwoInputs(nn.Module):
    """Float features and int64 ids in; a dict of two float outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.lin = nn.Linear(16, 3)

    def forward(self, features: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.emb(ids).mean(dim=1)
        h = torch.cat([features, pooled], dim=1)
        return {"score": self.lin(h), "norm": h.norm(dim=1)}


def make_two_inputs() -> nn.Module:
    return TwoInputs()


def make_not_a_module() -> object:
    return "not a module"


class DataDependent(nn.Module):
    """Branches on a tensor's value: eager torch runs it, torch.export cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.lin(x)
        return -self.lin(x)


def make_data_dependent() -> nn.Module:
    return DataDependent()


@torch.library.custom_op("interop_bench_tests::clipped_square", mutates_args=())
def clipped_square(x: torch.Tensor) -> torch.Tensor:
    """A custom operator, as a team's own C++/CUDA kernel would be: eager torch runs it, an exporter
    or runtime that does not know it cannot."""
    return torch.clamp(x * x, max=4.0)


@clipped_square.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class CustomOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return clipped_square(self.lin(x))


def make_custom_op() -> nn.Module:
    return CustomOp()


class LogOfInput(nn.Module):
    """log(x): NaN for the negative inputs an input range of -1..1 generates."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


def make_log() -> nn.Module:
    return LogOfInput()


class Slow(nn.Module):
    """x + 0, after 0.3 s: a model that keeps the server busy long enough for callers to overlap."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(0.3)
        return x + 0


def make_slow() -> nn.Module:
    return Slow()


class LengthFrozenByTrace(nn.Module):
    """Token ids [batch, seq] in, the mean of their embeddings' sums out ([batch, 1]). The length is read
    with ``int()``, which a trace records as a constant: a model traced at one length that silently
    gives wrong outputs at every other, in the right shape (what the shapes scenario must catch)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(100, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n = int(ids.shape[1])
        return self.emb(ids).sum(-1).sum(-1, keepdim=True) / n


def make_length_frozen() -> nn.Module:
    return LengthFrozenByTrace()
