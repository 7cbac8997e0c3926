"""Hint adaptation layers (Chen et al., NeurIPS 2017, Sec. 3.4; spec ``docs/methods.md``, section 1).

The hint loss compares a student feature map ``V`` with the teacher's ``Z`` at the same
backbone/FPN level: ``L_hint = ||adapt(V) - Z||^2``. The paper always inserts an
adaptation layer (a 1x1 convolution), even when the channel counts already match: it was
worth +1.1 mAP on VOC (56.9 -> 58.0) and +1.8 on KITTI over no adaptation. ``kind="identity"``
is the "no adaptation layer" ablation and needs equal channel counts.

Levels are named like torchvision's FPN outputs (``"0"``, ``"1"``, ..., ``"pool"``) or
any backbone return-layer name. :class:`torch.nn.ModuleDict` keys cannot contain ``"."``
(nor be empty or shadow a module attribute), so every level name is escaped into a safe,
injective key (``"0" -> "l_0"``, ``"layer1.0" -> "l_layer1_d0"``); use
:meth:`HintAdapters.adapter` to get the module of a level by its original name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkd.losses.detection import hint_loss

__all__ = ["HintAdapters", "hint_losses", "ADAPTER_KINDS", "module_key"]

ADAPTER_KINDS = ("conv1x1", "identity")


def module_key(level: str) -> str:
    """A level name as a safe, injective ``nn.ModuleDict`` key."""
    # Escape "_" first so the code is prefix-free and therefore injective; the "l_"
    # prefix keeps keys non-empty and away from nn.Module attribute names
    # (e.g. a level called "training" or "forward").
    return "l_" + level.replace("_", "__").replace(".", "_d")


class HintAdapters(nn.Module):
    """One adaptation layer per hint level, mapping student features to teacher space.

    Args:
        channels: mapping ``level name -> (student_channels, teacher_channels)``.
        kind: ``"conv1x1"`` (the paper's adaptation layer, always used, even when the
            channels match) or ``"identity"`` (no adaptation; requires equal channels,
            otherwise :class:`ValueError` naming the level and both counts).

    Initialization of each 1x1 conv: Kaiming-normal with ``fan_in`` and a *linear* gain
    (std ``1/sqrt(student_channels)``) and zero bias. The adapter has no activation after
    it (it regresses teacher features, which can be negative, e.g. FPN outputs), so the
    linear gain keeps the adapted map at the student feature's scale at the start instead
    of inflating it by sqrt(2); the zero bias adds no offset the hint loss would have to
    undo first.
    """

    def __init__(self, channels: Mapping[str, tuple[int, int]], kind: str = "conv1x1") -> None:
        super().__init__()
        if kind not in ADAPTER_KINDS:
            raise ValueError(
                f"unknown adapter kind {kind!r}; expected one of "
                f"{', '.join(map(repr, ADAPTER_KINDS))}"
            )
        if len(channels) == 0:
            raise ValueError("HintAdapters needs at least one level")
        self.kind = kind
        self.channels: dict[str, tuple[int, int]] = {}
        self._keys: dict[str, str] = {}
        self.adapters = nn.ModuleDict()
        for level, pair in channels.items():
            level = str(level)
            try:
                c_s, c_t = (int(c) for c in pair)
            except (TypeError, ValueError):
                raise ValueError(
                    f"hint level {level!r}: expected (student_channels, teacher_channels), "
                    f"got {pair!r}"
                ) from None
            if c_s <= 0 or c_t <= 0:
                raise ValueError(
                    f"hint level {level!r}: channel counts must be positive, got student "
                    f"{c_s} and teacher {c_t}"
                )
            if kind == "identity":
                if c_s != c_t:
                    raise ValueError(
                        f"hint level {level!r}: adapter kind 'identity' needs equal channels, "
                        f"got student {c_s} and teacher {c_t} channels; use kind 'conv1x1'"
                    )
                module: nn.Module = nn.Identity()
            else:
                conv = nn.Conv2d(c_s, c_t, kernel_size=1, bias=True)
                nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="linear")
                nn.init.zeros_(conv.bias)
                module = conv
            key = module_key(level)
            self.channels[level] = (c_s, c_t)
            self._keys[level] = key
            self.adapters[key] = module

    @property
    def levels(self) -> list[str]:
        """The configured level names, in construction order."""
        return list(self.channels)

    def adapter(self, level: str) -> nn.Module:
        """The adaptation module of ``level`` (by its original, unescaped name)."""
        if level not in self._keys:
            raise ValueError(f"no hint adapter for level {level!r}; configured: {self.levels}")
        return self.adapters[self._keys[level]]

    def forward(
        self,
        student_feats: Mapping[str, Tensor],
        teacher_feats: Mapping[str, Tensor],
        levels: Sequence[str] | None = None,
    ) -> dict[str, Tensor]:
        """Adapt the student maps of ``levels`` (default: all configured levels).

        Each student map ``[B, C_s, H_s, W_s]`` goes through its level's adapter and, if its
        spatial size differs from the teacher map's, is resized to ``(H_t, W_t)`` with
        bilinear interpolation (``align_corners=False``). The 1x1 conv runs before the
        resize: the two commute (both are linear, bilinear weights sum to 1) and the
        conv is cheaper at the student's resolution when it is the smaller one. Teacher
        maps are only read for their shape; no gradient flows to them from here.
        """
        names = self.levels if levels is None else list(levels)
        out: dict[str, Tensor] = {}
        for level in names:
            module = self.adapter(level)
            for feats, who in ((student_feats, "student"), (teacher_feats, "teacher")):
                if level not in feats:
                    raise ValueError(
                        f"hint level {level!r} missing from the {who} features; "
                        f"available: {list(feats)}"
                    )
            s, t = student_feats[level], teacher_feats[level]
            c_s, c_t = self.channels[level]
            if s.dim() != 4 or t.dim() != 4:
                raise ValueError(
                    f"hint level {level!r}: expected [B, C, H, W] maps, got student "
                    f"{tuple(s.shape)} and teacher {tuple(t.shape)}"
                )
            if s.shape[1] != c_s or t.shape[1] != c_t:
                raise ValueError(
                    f"hint level {level!r}: adapter built for student {c_s} -> teacher {c_t} "
                    f"channels, got student {s.shape[1]} and teacher {t.shape[1]} channels"
                )
            adapted = module(s)
            if adapted.shape[-2:] != t.shape[-2:]:
                adapted = F.interpolate(
                    adapted, size=tuple(t.shape[-2:]), mode="bilinear", align_corners=False
                )
            out[level] = adapted
        return out

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, channels={self.channels}"


def hint_losses(
    adapters: HintAdapters,
    student_feats: Mapping[str, Tensor],
    teacher_feats: Mapping[str, Tensor],
    levels: Sequence[str],
    reduction: str = "mean",
) -> Tensor:
    """Hint loss averaged over levels: ``(1/|levels|) sum_l hint_loss(adapt_l(V_l), Z_l)``.

    The mean over levels (not a sum) keeps ``gamma`` independent of how many levels are
    chosen. ``reduction`` is passed to :func:`detkd.losses.detection.hint_loss` per level
    (``"mean"``: elementwise mean, the default; ``"sum"``; ``"none"``: per-sample ``[B]``),
    and the per-level results are then averaged. Teacher features are detached.
    """
    names = list(levels)
    if not names:
        raise ValueError("hint_losses needs at least one level")
    adapted = adapters(student_feats, teacher_feats, names)
    per_level = [hint_loss(adapted[l], teacher_feats[l], reduction) for l in names]
    return torch.stack(per_level).mean(dim=0)
