"""Frozen-backbone evaluation: features of un-augmented images (resized to the
run's view size, normalised like the views), then a weighted kNN classifier
(k = 20, T = 0.07, Wu et al. 2018) and a linear classifier (multinomial
logistic regression on standardised features, full-batch L-BFGS) for every
labeling of the dataset.

Labelings: ``class`` (the manifest's); for the synthetic colour x shape set
also ``colour`` and ``shape`` (tools/make_synthetic.py), recovered from the
class names.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipelines.recipe import IMAGENET_MEAN, IMAGENET_STD
from pipelines.records import Records, open_rgb


def labelings(records: Records, labels: np.ndarray) -> dict[str, np.ndarray]:
    out = {"class": labels}
    classes = records.manifest.get("classes") or []
    try:
        from tools.make_synthetic import factors_of
        factors = factors_of(classes)
    except (ValueError, KeyError):
        return out
    for name, per_class in factors.items():
        out[name] = np.asarray(per_class)[labels]
    return out


@torch.no_grad()
def features(backbone, data: str, size: int, device, batch: int = 500):
    """-> (N, F) float32 features on CPU, (N,) labels, the Records."""
    rec = Records(data)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)   # every preset's normalisation
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    backbone.eval()
    feats, labels = [], []
    for lo in range(0, len(rec), batch):
        imgs = []
        for i in range(lo, min(lo + batch, len(rec))):
            data_bytes, label, _ = rec[i]
            im = open_rgb(data_bytes).resize((size, size), Image.BILINEAR)
            imgs.append(torch.from_numpy(np.asarray(im).copy()))
            labels.append(label)
        x = torch.stack(imgs).permute(0, 3, 1, 2).float().div(255)
        x = ((x - mean) / std).to(device).contiguous(memory_format=torch.channels_last)
        feats.append(backbone(x).float().cpu())
    return torch.cat(feats), np.asarray(labels), rec


def knn_accuracy(train_f, train_y, test_f, test_y, k: int = 20, t: float = 0.07) -> float:
    train_f, test_f = F.normalize(train_f, dim=1), F.normalize(test_f, dim=1)
    train_y, test_y = torch.as_tensor(train_y), torch.as_tensor(test_y)
    classes = int(max(train_y.max(), test_y.max())) + 1
    correct = 0
    for lo in range(0, len(test_f), 1000):
        sim = test_f[lo:lo + 1000] @ train_f.t()
        w, idx = sim.topk(k, dim=1)
        votes = torch.zeros(len(sim), classes).scatter_add_(1, train_y[idx], (w / t).exp())
        correct += (votes.argmax(1) == test_y[lo:lo + 1000]).sum().item()
    return correct / len(test_f)


def linear_accuracy(train_f, train_y, test_f, test_y, wd: float = 1e-4,
                    iters: int = 200) -> float:
    mu, sd = train_f.mean(0), train_f.std(0) + 1e-6
    a, b = (train_f - mu) / sd, (test_f - mu) / sd
    ya, yb = torch.as_tensor(train_y), torch.as_tensor(test_y)
    classes = int(max(ya.max(), yb.max())) + 1
    torch.manual_seed(0)
    lin = torch.nn.Linear(a.shape[1], classes)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1, max_iter=iters, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(a), ya) + wd * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (lin(b).argmax(1) == yb).float().mean().item()


def evaluate(backbone, train_data: str, test_data: str, size: int, device="cpu") -> dict:
    tr_f, tr_y, tr_rec = features(backbone, train_data, size, device)
    te_f, te_y, te_rec = features(backbone, test_data, size, device)
    out = {}
    tr_l, te_l = labelings(tr_rec, tr_y), labelings(te_rec, te_y)
    for name in tr_l:
        out[name] = {"knn": knn_accuracy(tr_f, tr_l[name], te_f, te_l[name]),
                     "linear": linear_accuracy(tr_f, tr_l[name], te_f, te_l[name])}
    return out


def load_backbone(run_dir: Path, device="cpu"):
    """The run's backbone.pt into a fresh backbone built from its config.json."""
    from trainer.build import stem_for
    from trainer.config import from_dict
    from trainer.models import build_backbone

    cfg = from_dict(json.loads((Path(run_dir) / "config.json").read_text())["config"])
    net, _ = build_backbone(cfg.backbone, stem_for(cfg))
    net.load_state_dict(torch.load(Path(run_dir) / "backbone.pt", map_location="cpu"))
    return net.to(device).to(memory_format=torch.channels_last), cfg


def evaluate_run(run_dir, train_data: str, test_data: str, device="cpu") -> dict:
    net, cfg = load_backbone(Path(run_dir), device)
    result = evaluate(net, train_data, test_data, cfg.size, device)
    (Path(run_dir) / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
