"""Shared plumbing of the FPN-feature methods: one small module per matched level pair."""

from __future__ import annotations

from torch import Tensor, nn

from detkd.distill.methods.base import DistillMethod, DistillRecord, LevelPair
from detkd.losses.feature import match_size
from detkd.modeling.adapters import module_key


class LevelMethod(DistillMethod):
    """A method whose loss is the sum over its level pairs of one per-level term.

    Subclasses implement ``level_loss(pair, s, t, rec)`` with ``s`` the
    student map resized to the teacher's H x W (bilinear; a no-op at equal input sizes)
    and ``t`` the detached teacher map; per-level modules live in ``self.per_level``.
    The result is logged as ``loss_<name>`` (weighted) and ``raw_<name>`` (unweighted),
    ``name`` the method's METHODS key."""

    def __init__(self, pairs: list[LevelPair], weight: float) -> None:
        super().__init__()
        self.pairs = pairs
        self.weight = float(weight)
        self.per_level = nn.ModuleDict()

    def level_module(self, pair: LevelPair) -> nn.Module:
        return self.per_level[module_key(pair.student)]

    def terms(self) -> frozenset[str]:
        return frozenset({self.name})

    def teacher_levels(self) -> list[str]:
        return [p.teacher for p in self.pairs]

    def level_loss(self, pair: LevelPair, s: Tensor, t: Tensor, rec: DistillRecord) -> Tensor:
        raise NotImplementedError

    def forward(self, rec: DistillRecord) -> dict[str, Tensor]:
        total = None
        for pair in self.pairs:
            t = rec.teacher_features[pair.teacher]
            s = match_size(rec.features[pair.student], t.shape[-2:])
            value = self.level_loss(pair, s, t, rec)
            total = value if total is None else total + value
        self.stats = {f"raw_{self.name}": total.detach()}
        return {f"loss_{self.name}": total * self.weight}
