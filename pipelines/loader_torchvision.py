"""The baseline: PIL decoding and torchvision.transforms.v2 per image in
DataLoader workers, as the AugSelf reference code works, emitting the same
parameters. The fallback where neither DALI nor FFCV is installed.

Each worker renders a view with the reference ops (pipelines/reference.py);
parameters come from the counter RNG, so they do not depend on the worker
count. The crop box is torchvision's RandomResizedCrop algorithm.
"""

from __future__ import annotations

import numpy as np
import torch

from pipelines import reference
from pipelines.batch import Finisher
from pipelines.checks import DamagedSample, DamageLog
from pipelines.epochs import EpochLoader, EpochPlan
from pipelines.params import FIELDS
from pipelines.records import Records, open_rgb
from pipelines.sampling import crop_args, crop_box, crop_params, sample_rest


class _Views(torch.utils.data.Dataset):
    def __init__(self, records: Records, recipe, seed: int):
        self.records, self.recipe, self.seed, self.epoch = records, recipe, seed, 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        # A damaged sample is returned as such, not raised: a worker's exception would
        # reach the user wrapped in the DataLoader's traceback; the main process
        # reports it, named (pipelines/checks.py)
        if self.records.damaged([i])[0]:
            return _Damaged(f"{self.records.where(i)}: {self.records.damage}")
        data, label, index = self.records[i]
        try:
            src = np.asarray(open_rgb(data))
        except Exception as e:  # noqa: BLE001 - any decoder failure is a damaged sample
            return _Damaged(f"{self.records.where(i)}: cannot decode the image ({e})")
        h, w = src.shape[:2]
        views, params = [], {k: [] for k in FIELDS}
        idx = torch.tensor([index])
        for v, vr in enumerate(self.recipe.views):
            box = crop_box(h, w, *crop_args(vr), self.seed, self.epoch, index, v)
            p = {k: t[0] for k, t in sample_rest(vr, self.seed, self.epoch, idx, v).items()}
            p["crop"] = torch.from_numpy(crop_params(box, h, w))
            views.append(torch.from_numpy(reference.render(src, p, vr)))
            for k in FIELDS:
                params[k].append(p[k])
        return views, {k: torch.stack(t) for k, t in params.items()}, label, index


class _Damaged(str):
    pass


def _collate(items):
    """A batch, and the damaged samples in it: each one's slot is taken by a
    repeat of the first good sample (pipelines/checks.py)."""
    problems = [str(it) for it in items if isinstance(it, _Damaged)]
    good = [it for it in items if not isinstance(it, _Damaged)]
    if not good:
        return _Damaged(f"{problems[0]}; and every other sample of its batch is damaged")
    items = [good[0] if isinstance(it, _Damaged) else it for it in items]
    views = [torch.stack([it[0][v] for it in items]) for v in range(len(items[0][0]))]
    params = {k: torch.stack([it[1][k] for it in items]) for k in FIELDS}
    labels = torch.tensor([it[2] for it in items])
    index = torch.tensor([it[3] for it in items])
    return views, params, labels, index, problems


class TorchvisionLoader(EpochLoader):
    """Iterates one epoch of Batches; call set_epoch(e) before each epoch."""

    def __init__(self, data_dir, recipe, batch_size: int, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = True, rank: int = 0, world: int = 1, workers: int = 2,
                 device="cpu", dtype=torch.float32, keep_raw: bool = False,
                 on_damaged: str = "skip"):
        self.records = Records(data_dir)
        self.damage = DamageLog(on_damaged)
        self.dataset = _Views(self.records, recipe, seed)
        self.plan = EpochPlan(len(self.records), batch_size, seed, shuffle, drop_last, rank,
                              world)
        self.recipe, self.seed, self.workers = recipe, seed, workers
        self.device = torch.device(device)
        self.finish = Finisher(recipe, seed, self.device, dtype, keep_raw, stage="done")

    def __iter__(self):
        self.dataset.epoch = self.epoch
        order = self.epoch_order()
        dl = torch.utils.data.DataLoader(
            self.dataset, batch_size=self.plan.batch_size, sampler=order,
            drop_last=self.plan.drop_last, num_workers=self.workers, collate_fn=_collate,
            pin_memory=self.device.type == "cuda", persistent_workers=False)
        for item in dl:
            if isinstance(item, _Damaged):
                raise DamagedSample(str(item))
            views, params, labels, index, problems = item
            self.damage.report(problems)
            yield self.finish(views, params["crop"], labels, index, self.epoch, done=params)
