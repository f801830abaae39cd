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
from pipelines.params import split
from pipelines.photometric_cpu import param_rows, recipe_rows
from pipelines.records import Records, open_rgb
from pipelines.sampling import crop_args, crop_box, crop_params


class _Views(torch.utils.data.Dataset):
    def __init__(self, records: Records, recipe, seed: int):
        self.records, self.recipe, self.seed, self.epoch = records, recipe, seed, 0
        self.table = recipe_rows(recipe)  # photometric_cpu's draw table

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
        crop = np.stack([crop_params(crop_box(h, w, *crop_args(vr), self.seed, self.epoch,
                                              index, v), h, w)
                         for v, vr in enumerate(self.recipe.views)])
        row = torch.from_numpy(param_rows(self.table, self.seed, self.epoch, [index],
                                          crop[None])[0])  # (V, WIDTH)
        views = [torch.from_numpy(reference.render(src, split(row[v]), vr))
                 for v, vr in enumerate(self.recipe.views)]
        return views, row, label, index


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
    rows = torch.stack([it[1] for it in items])
    labels = torch.tensor([it[2] for it in items])
    index = torch.tensor([it[3] for it in items])
    return views, rows, labels, index, problems


class TorchvisionLoader(EpochLoader):
    """Iterates one epoch of Batches; call set_epoch(e) before each epoch."""

    def __init__(self, cfg, chosen, finish: Finisher):
        """cfg: the LoaderConfig; chosen: what build_loader resolved from it
        (pipelines/build.py Resolved); finish: the last stage it built."""
        self.records = Records(cfg.data)
        self.resolved, self.recipe, self.device = chosen, chosen.recipe, chosen.device
        self.damage = DamageLog(cfg.on_damaged)
        self.dataset = _Views(self.records, self.recipe, cfg.seed)
        self.plan = EpochPlan(len(self.records), cfg.batch_size, cfg.seed, cfg.shuffle,
                              cfg.drop_last, cfg.rank, cfg.world)
        self.seed, self.workers, self.finish = cfg.seed, cfg.workers, finish

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
            views, rows, labels, index, problems = item
            self.damage.report(problems)
            yield self.finish(views, rows, labels, index)
