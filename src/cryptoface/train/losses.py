"""Training losses: relational and projected-cosine distillation from the teacher, CosFace, jigsaw.

The product embedding stays the student's 256-d output. Distillation compares *geometry*, which does
not need the two spaces to share a dimension:

* relational: within a batch, the student's cosine-similarity matrix should equal the teacher's
  (mean squared difference over the off-diagonal entries). This is exactly what verification uses.
* projection: a learned linear map P (256 -> 128, training only, discarded at export) sends the student
  embedding onto the teacher's; loss 1 - cos(P s, t). It transfers per-sample structure the relational
  term sees only through the other samples of the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def relational_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the off-diagonal in-batch cosine similarities."""
    s = F.normalize(student.float(), dim=1)
    t = F.normalize(teacher.float(), dim=1)
    diff = s @ s.T - t @ t.T
    n = diff.shape[0]
    off = ~torch.eye(n, dtype=torch.bool, device=diff.device)
    return diff[off].pow(2).mean()


class Projection(nn.Module):
    """Linear student -> teacher map for the cosine distillation term."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, d_out, bias=False)

    def forward(self, student: torch.Tensor) -> torch.Tensor:
        return self.linear(student.float())


def projection_loss(projected: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return (1.0 - F.cosine_similarity(projected, teacher.float(), dim=1)).mean()


class CosFace(nn.Module):
    """Large-margin cosine loss (CosFace): s (cos(theta_y) - m) on the target class, s cos elsewhere."""

    def __init__(self, d: int, n_classes: int, scale: float = 32.0, margin: float = 0.35) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_classes, d) * 0.01)
        self.scale, self.margin = scale, margin

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(emb.float(), dim=1) @ F.normalize(self.weight, dim=1).T
        onehot = F.one_hot(labels, cos.shape[1]).to(cos.dtype)
        return F.cross_entropy(self.scale * (cos - self.margin * onehot), labels)


def jigsaw_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Patch-position classification (the paper's auxiliary task)."""
    return F.cross_entropy(logits.float(), targets)
