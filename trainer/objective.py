"""The model the loop trains: one method, optional auxiliary objectives built
around it (AugSelf, EquiMod or E-SSL), and an online linear probe.

An auxiliary head may look at views of its own, appended after the method's
(``aux.extra_views`` of them, E-SSL's rotated views): the method then gets the
batch of its own views only, and the head gets the backbone's features of the
extra ones, from one backbone call over all of them.

``forward(batch)`` returns the total ``"loss"`` and detached tensors to log:
``ssl`` (the method's loss), the auxiliary terms, ``probe/loss`` and
``probe/acc``. The probe is a linear classifier on *detached* view-1 backbone
features (a monitor: it never moves the backbone); rows labelled -1 are ignored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class LinearProbe(nn.Module):
    def __init__(self, features: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(features, num_classes)

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        # the probe's own dtype: float32, float64 in an fp64 run (a fixed .float()
        # made every --precision fp64 run with the probe fail at its first step)
        logits = self.fc(feats.detach().to(self.fc.weight.dtype))
        known = labels >= 0
        n = known.sum().clamp(min=1)
        loss = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
        loss = (loss * known).sum() / n
        acc = ((logits.argmax(1) == labels) & known).sum() / n
        return {"loss": loss, "probe/loss": loss.detach(), "probe/acc": acc.detach().float()}


class Objective(nn.Module):
    def __init__(self, method: nn.Module, aux: nn.Module | None, probe: LinearProbe | None):
        super().__init__()
        self.method, self.aux, self.probe = method, aux, probe
        self._forward_state: list[torch.Tensor] | None = None

    def forward(self, batch) -> dict[str, torch.Tensor]:
        extra = getattr(self.aux, "extra_views", 0)
        out = self.method(batch.first(len(batch.views) - extra) if extra else batch)
        feats = out.pop("feats")
        total = out.pop("loss")
        logs = {"ssl": total.detach()}
        aux_args = (feats, batch)
        if extra:
            aux_args += (self.method.backbone(torch.cat(batch.views[-extra:])),)
        for part in (self.aux(*aux_args) if self.aux is not None else None,
                     self.probe(feats[0], batch.labels) if self.probe is not None else None):
            if part is not None:
                total = total + part.pop("loss")
                logs.update(part)
        logs.update({k: v.detach() for k, v in out.items()})
        logs["loss"] = total
        return logs

    def parts(self) -> list[nn.Module]:
        return [m for m in (self.method, self.aux, self.probe) if m is not None]

    def after_backward(self, step: int) -> None:
        """The loop's hook between backward and the optimiser step, passed to every
        part that has one (SwAV freezes its prototypes here)."""
        for m in self.parts():
            if hasattr(m, "after_backward"):
                m.after_backward(step)

    def after_step(self, progress: float, ok: torch.Tensor | None = None) -> None:
        """After the optimiser step (momentum encoders move here, MoCo enqueues);
        ``progress`` in [0, 1]; ``ok`` (0-dim bool, on the device): whether the step
        is applied, None when not checked (trainer/step.py)."""
        for m in self.parts():
            if hasattr(m, "after_step"):
                m.after_step(progress, ok)

    def forward_state(self) -> list[torch.Tensor]:
        """Every tensor ``forward`` changes in place: the running statistics of every
        BatchNorm (SyncBN and the target networks' included; torch updates them in
        the forward pass, before the loss says whether the step is to be applied)
        and what a part lists itself (SwAV's prototypes, normalised in forward).
        Found once (a walk over ~300 modules is ~0.4 ms of host time a step at
        ResNet-50 size) and again after ``.to()`` and the like (``_apply``), which
        give buffers new tensors; BN layers are swapped for SyncBN before that."""
        if self._forward_state is None:
            out = [t for m in self.modules() if isinstance(m, _BatchNorm)
                   for t in (m.running_mean, m.running_var, m.num_batches_tracked)
                   if t is not None]
            for m in self.parts():
                if hasattr(m, "forward_state"):
                    out += m.forward_state()
            self._forward_state = out
        return self._forward_state

    def _apply(self, fn, *args, **kwargs):
        self._forward_state = None
        return super()._apply(fn, *args, **kwargs)

    def param_groups(self) -> list[dict]:
        """The method's groups, with the auxiliary heads' and the probe's parameters
        in its first scheduled group (same rate and decay: one foreach update for
        all of them instead of a group of their own)."""
        groups = [dict(g) for g in self.method.param_groups()]
        extra = [p for m in (self.aux, self.probe) if m is not None for p in m.parameters()
                 if p.requires_grad]
        if extra:
            scheduled = next((g for g in groups if not g["fixed_lr"]), None)
            if scheduled is None:
                groups.append({"params": extra, "fixed_lr": False})
            else:
                scheduled["params"] = [*scheduled["params"], *extra]
        return groups
