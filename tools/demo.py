"""`make demo`: the whole product on the embedded synthetic dataset.

1. generates the coloured-shapes dataset (64x64; colour and shape labels),
2. converts its train and test splits to records + .beton,
3. pretrains SimSiam and SimSiam + AugSelf (crop and colour rows) with the
   small ResNet on 32 px views, on the best backend here (dali-gpu on a GPU,
   else the CPU path),
4. evaluates both on the colour task and the shape task, and writes
   report.md and report.png into the demo folder.

Every step reuses what a previous `make demo` finished (a run interrupted
mid-way resumes from its checkpoint), so a second run is quick.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tools import convert_dataset, demo_report, make_synthetic

RUNS = [("SimSiam", "none", "run-simsiam"), ("SimSiam + AugSelf", "augself", "run-simsiam-augself")]


def prepare_data(out: Path, n_train: int, n_test: int, seed: int) -> int:
    images = out / "synthetic"
    if not (images / "synthetic.json").exists():
        print(f"[demo] generating the synthetic dataset into {images}", flush=True)
        make_synthetic.generate(images, (64, 64), n_train, n_test, seed, overwrite=True)
    else:
        print(f"[demo] reusing {images}")
    for split in ("train", "test"):
        dst = out / f"converted-{split}"
        if (dst / "manifest.json").exists():
            print(f"[demo] reusing {dst}")
            continue
        print(f"[demo] converting {split} -> {dst}", flush=True)
        rc = convert_dataset.main([str(images), "--split", split, "--out", str(dst),
                                   "--write-mode", "raw", "--overwrite", "--quiet"])
        if rc:
            return rc
    return 0


def _same(a: dict, b: dict) -> bool:
    """Two configs train the same run: they differ at most where a resume may."""
    from trainer.config import RESUME_MAY_CHANGE
    return {k: v for k, v in a.items() if k not in RESUME_MAY_CHANGE} == \
        {k: v for k, v in b.items() if k not in RESUME_MAY_CHANGE}


def pretrain(out: Path, name: str, aux: str, folder: str, a) -> dict:
    from trainer.config import Config, validate
    from trainer.run import train

    run_dir = out / folder
    cfg = Config(data=str(out / "converted-train"), test_data=str(out / "converted-test"),
                 out=str(run_dir), method="simsiam", aux=aux, backbone="small", size=32,
                 batch_size=256, epochs=a.epochs, lr=0.1, proj_hidden=512, proj_dim=512,
                 augself_crop=1.0, augself_color=1.0, seed=a.seed, log_every=5,
                 backend=a.backend, progress=not a.quiet)
    validate(cfg)
    done = run_dir / "demo.json"
    if done.exists():
        saved = json.loads(done.read_text())
        if _same(saved.get("config", {}), cfg.__dict__):
            print(f"[demo] reusing {run_dir}")
            return saved
    resume = (run_dir / "checkpoint.pt").exists() and (run_dir / "config.json").exists() and \
        _same(json.loads((run_dir / "config.json").read_text())["config"], cfg.__dict__)
    if (run_dir / "checkpoint.pt").exists() and not resume:
        import shutil
        shutil.rmtree(run_dir)  # a run of the demo with other settings: start over
    cfg.resume = resume
    print(f"[demo] pretraining {name} ({a.epochs} epochs) -> {run_dir}"
          + (" (resuming)" if resume else ""), flush=True)
    t0 = time.perf_counter()
    summary = train(cfg)
    seconds = time.perf_counter() - t0
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = sorted(x["images_per_s"] for x in lines[1:]) or [0.0]
    cfg.resume = False
    row = {"name": name, "eval": summary["eval"], "seconds": seconds,
           "images_per_s": rates[len(rates) // 2], "backend": summary["backend"],
           "device": summary["device"], "config": cfg.__dict__}
    done.write_text(json.dumps(row, indent=2) + "\n")
    return row


def untrained(out: Path, seed: int) -> dict:
    """The same backbone at initialisation: what pretraining adds is measured from here."""
    import torch

    from trainer.evaluate import evaluate
    from trainer.models import build_backbone

    torch.manual_seed(seed)
    net, _ = build_backbone("small")
    net = net.to(memory_format=torch.channels_last)
    print("[demo] evaluating the untrained backbone (reference row)", flush=True)
    result = evaluate(net, str(out / "converted-train"), str(out / "converted-test"), 32)
    return {"name": "untrained (random init)", "eval": result}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="demo", help="demo folder")
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=10, help="pretraining epochs per run")
    p.add_argument("--backend", default="auto", help="loader backend (default: best here)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    out = Path(a.out)
    rc = prepare_data(out, a.n_train, a.n_test, a.seed)
    if rc:
        return rc
    rows = [untrained(out, a.seed)] + [pretrain(out, name, aux, folder, a)
                                       for name, aux, folder in RUNS]
    setup = (f"Small ResNet (16-128 channels), 32 px views of the 64 px images, batch 256, "
             f"{a.epochs} epochs, SGD lr 0.1 with cosine decay, projector 512-512; AugSelf "
             f"rows crop and colour at weight 1. Backend {rows[1]['backend']} on "
             f"{rows[1]['device']}. Colour jitter (hue +-0.1 turn, saturation, grayscale) "
             f"pushes SimSiam towards colour invariance; AugSelf's colour head asks the "
             f"backbone to keep what the jitter changed.")
    md, png = demo_report.write(out, rows, setup)
    print("\n" + md.read_text().split("\n\nAccuracy")[0].split("\n", 4)[-1])
    print(f"\n[demo] report: {md}  plot: {png}")
    print(f"[demo] runs: {', '.join(str(out / folder) for _, _, folder in RUNS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
