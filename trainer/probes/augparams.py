"""The augmentation-parameter probe: how linearly a view's own augmentation
parameters can be read from its frozen backbone features (what AugSelf's heads
ask the backbone to keep; Lee et al. 2021 Sec. 4 analyse the same question).

Views are rendered by the project's own loader (pipelines/build.py) with the
run's recipe, one pass over the split in file order, both views of every
sample used as single views; each view's parameters (pipelines/params.py,
NAMES) are the targets of a ridge regression fitted on the train split's views
and scored on the test split's (R^2 per parameter). A parameter that never
varies under the recipe (e.g. solarize off) has no R^2 (None).
"""

from __future__ import annotations

import sys

import torch

from pipelines.build import LoaderConfig, build_loader
from pipelines.params import FIELDS, NAMES


@torch.no_grad()
def view_features(backbone: torch.nn.Module, loader_cfg: LoaderConfig, device="cpu",
                  progress: bool = True, max_views: int | None = None):
    """-> (features (M, F), parameters (M, params.WIDTH)) of single augmented views, on CPU."""
    from tqdm import tqdm

    loader = build_loader(loader_cfg)
    loader.set_epoch(0)
    backbone.eval()
    feats, params = [], []
    bar = tqdm(total=len(loader), disable=not progress, unit="batch", file=sys.stderr,
               desc="augmented views", dynamic_ncols=True)
    for batch in loader:
        flat = torch.cat([batch.params[k] for k in FIELDS], -1)  # (B, V, WIDTH)
        for v in range(min(2, len(batch.views))):
            x = batch.views[v].to(device).float().contiguous(memory_format=torch.channels_last)
            feats.append(backbone(x).float().cpu())
            params.append(flat[:, v].float().cpu())
        bar.update(1)
        if max_views is not None and sum(len(p) for p in params) >= max_views:
            break
    bar.close()
    return torch.cat(feats), torch.cat(params)


def augparams_probe(train: tuple[torch.Tensor, torch.Tensor],
                    test: tuple[torch.Tensor, torch.Tensor], seed: int = 0) -> dict:
    """Ridge R^2 of every parameter, test split; ``{"r2": {name: float | None},
    "l2": {name: float | None}, "mean_r2": mean over the parameters that vary}``.

    One ridge per parameter, each with its own strength chosen on the validation
    split: a pooled choice is dominated by the parameters the features do not
    hold (their best strength is large) and shrinks the ones they do."""
    from trainer.probes.ridge import ridge_r2

    per, l2 = {}, {}
    for j, name in enumerate(NAMES):
        if train[1][:, j].std() == 0 or test[1][:, j].std() == 0:
            per[name] = l2[name] = None  # never varies under this recipe
            continue
        out = ridge_r2(train[0], train[1][:, j], test[0], test[1][:, j], seed=seed)
        per[name], l2[name] = out["r2"], out["l2"]
    known = [v for v in per.values() if v is not None]
    return {"r2": per, "l2": l2, "mean_r2": sum(known) / len(known) if known else None}
