"""`make demo`: the whole product on the embedded synthetic dataset.

1. generates the coloured-shapes dataset (64x64; 12 fine hue bins x 5 shapes),
2. converts its train and test splits to records + .beton,
3. pretrains SimSiam and SimSiam + AugSelf (crop and colour rows) with the
   small ResNet on 32 px views, for each of three seeds, on the best backend
   here (dali-gpu on a GPU, else the CPU path),
4. evaluates every backbone (and an untrained one) on the colour task, the
   shape task and the colour probe, and writes report.json (each seed's
   figures), report.md (spread over seeds, paired differences, a verdict) and
   report.png into the demo folder.

Every step reuses what a previous `make demo` finished (a run interrupted
mid-way resumes from its checkpoint), so a second run is quick.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

from pipelines import cli
from reports import demo as demo_report
from tools import convert_dataset, make_synthetic

RUNS = [("SimSiam", "none", "run-simsiam"), ("SimSiam + AugSelf", "augself", "run-simsiam-augself")]
# Stronger hue jitter than the augself preset's 0.1 turn: +-0.2 turn (72 degrees,
# SimCLR's strength 1) moves an object across two or three of the 30-degree hue
# bins, so that invariance to it measurably costs colour information.
JITTER = "0.4,0.4,0.4,0.2"


def prepare_data(out: Path, n_train: int, n_test: int, seed: int, quiet: bool = False) -> int:
    images = out / "synthetic"
    meta = images / "synthetic.json"
    want = {"counts": {"train": n_train, "test": n_test}, "seed": seed,
            "hue_bin_degrees": make_synthetic.HUE_BIN}
    old = json.loads(meta.read_text()) if meta.exists() else None
    if old is not None and any(old.get(k) != v for k, v in want.items()):
        # another dataset (other counts, seed, or an older generator): start over,
        # and drop what was converted and trained from it
        print(f"[demo] {images} was generated with other settings: regenerating", flush=True)
        import shutil
        for stale in [images, *out.glob("converted-*"), *out.glob("run-*")]:
            shutil.rmtree(stale)
        old = None
    if old is None:
        print(f"[demo] generating the synthetic dataset into {images}", flush=True)
        make_synthetic.generate(images, (64, 64), n_train, n_test, seed, overwrite=True,
                                quiet=quiet)
    else:
        print(f"[demo] reusing {images}")
    for split in ("train", "test"):
        dst = out / f"converted-{split}"
        if (dst / "manifest.json").exists():
            print(f"[demo] reusing {dst}")
            continue
        print(f"[demo] converting {split} -> {dst}", flush=True)
        # the demo trains from the records (dali-cpu); a .beton only where FFCV is
        # installed, which most GPU machines do not have
        no_beton = [] if importlib.util.find_spec("ffcv") else ["--no-beton"]
        rc = convert_dataset.main([str(images), "--split", split, "--out", str(dst),
                                   "--write-mode", "raw", "--overwrite", "--quiet", *no_beton])
        if rc:
            return rc
    return 0


def _same(a: dict, b: dict) -> bool:
    """Two configs train the same run: they differ at most where a resume may."""
    from trainer.config import RESUME_MAY_CHANGE
    return {k: v for k, v in a.items() if k not in RESUME_MAY_CHANGE} == \
        {k: v for k, v in b.items() if k not in RESUME_MAY_CHANGE}


def _rates(lines: list[dict]) -> list[float]:
    """The training lines' images/s, sorted, the first (warm-up) left out; the
    online kNN's lines (trainer/online_knn.py) carry no rate."""
    return sorted([x["images_per_s"] for x in lines if "images_per_s" in x][1:]) or [0.0]


def pretrain(out: Path, name: str, aux: str, folder: str, seed: int, a) -> dict:
    from trainer.config import Config, to_dict, validate
    from trainer.run import train

    run_dir = out / folder
    cfg = Config(data=str(out / "converted-train"), test_data=str(out / "converted-test"),
                 out=str(run_dir), method="simsiam", aux=aux, backbone="small", size=32,
                 batch_size=a.batch_size, epochs=a.epochs, lr=0.1, proj_hidden=512,
                 proj_dim=512, augself_crop=1.0, augself_color=1.0, seed=seed, log_every=5,
                 backend=a.backend, progress=not a.quiet, jitter=a.jitter)
    validate(cfg)
    done = run_dir / "demo.json"
    if done.exists():
        saved = json.loads(done.read_text())
        if _same(saved.get("config", {}), to_dict(cfg)):  # as config.json writes it
            print(f"[demo] reusing {run_dir}")
            return saved
    resume = (run_dir / "checkpoint.pt").exists() and (run_dir / "config.json").exists() and \
        _same(json.loads((run_dir / "config.json").read_text())["config"], to_dict(cfg))
    if (run_dir / "checkpoint.pt").exists() and not resume:
        import shutil
        shutil.rmtree(run_dir)  # a run of the demo with other settings: start over
    cfg.resume = resume
    cfg.overwrite = not resume  # the demo's own folder: an unfinished run there starts over
    print(f"[demo] pretraining {name}, seed {seed} ({a.epochs} epochs) -> {run_dir}"
          + (" (resuming)" if resume else ""), flush=True)
    t0 = time.perf_counter()
    summary = train(cfg)
    seconds = time.perf_counter() - t0
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = _rates(lines)
    cfg.resume = cfg.overwrite = False
    row = {"method": name, "seed": seed, **demo_report.metrics_of(summary["eval"]),
           "seconds": seconds, "images_per_s": rates[len(rates) // 2],
           "backend": summary["backend"], "device": summary["device"],
           "config": to_dict(cfg)}
    done.write_text(json.dumps(row, indent=2) + "\n")
    return row


def untrained(out: Path, seed: int) -> dict:
    """The same backbone at initialisation: what pretraining adds is measured from here."""
    import torch

    from trainer.evaluate import EvalConfig, evaluate
    from trainer.models import build_backbone

    torch.manual_seed(seed)
    net, _ = build_backbone("small")
    net = net.to(memory_format=torch.channels_last)
    print("[demo] evaluating the untrained backbone (reference row)", flush=True)
    result = evaluate(net, str(out / "converted-train"), str(out / "converted-test"), 32,
                      ecfg=EvalConfig(tasks=("linear", "knn", "color"), progress=False))
    return demo_report.metrics_of(result)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="demo", help="demo folder")
    p.add_argument("--n-train", type=int, default=3000, help="synthetic train images")
    p.add_argument("--n-test", type=int, default=1000, help="synthetic test images")
    p.add_argument("--epochs", type=int, default=5, help="pretraining epochs per run")
    p.add_argument("--batch-size", type=int, default=128, help="pretraining batch")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated pretraining seeds")
    p.add_argument("--jitter", default=JITTER, help="colour jitter B,C,S,H of every view")
    p.add_argument("--backend", default="auto", help="loader backend (default: best here)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    cli.add_debug(p)
    a = p.parse_args(argv)
    try:
        seeds = [int(s) for s in a.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds {a.seeds!r}: expected integers like 0,1,2")
    out = Path(a.out)
    t0 = time.perf_counter()
    rc = prepare_data(out, a.n_train, a.n_test, a.seed, a.quiet)
    if rc:
        return rc
    reference = untrained(out, a.seed)
    rows = [pretrain(out, name, aux, f"{folder}-s{seed}", seed, a)
            for seed in seeds for name, aux, folder in RUNS]
    setup = (f"Small ResNet (16-128 channels), 32 px views of the 64 px images, "
             f"{a.n_train} training images, batch {a.batch_size}, {a.epochs} epochs, SGD "
             f"lr 0.1 x batch/256 with cosine decay, projector 512-512; AugSelf rows crop "
             f"and colour at weight 1. Colour jitter {a.jitter} (brightness, contrast, "
             f"saturation, hue in turns) with p 0.8, grayscale p 0.2. Backend "
             f"{rows[0]['backend']} on {rows[0]['device']}. Seeds {a.seeds}.")
    md, png = demo_report.write(out, rows, reference, setup)
    text = md.read_text()
    print("\n" + text.split("\n\nPer run:")[0].split("\n", 4)[-1])
    print(f"\n[demo] report: {md}  plot: {png}  figures: {out / 'report.json'}")
    print(f"[demo] {time.perf_counter() - t0:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "demo"))
