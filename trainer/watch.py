"""Watching a run: TensorBoard event files in RUN/tb next to metrics.jsonl,
and Weights & Biases when the package is installed and asked for.

Both get what metrics.jsonl gets (loss terms, lr, images/s, skipped steps,
probe accuracy) at the same steps, and every ``view_grid_every`` epochs a
picture of the first views of the epoch with their parameters written under
them (pipelines/view_grid.py). Only rank 0 writes. A resumed run purges the
TensorBoard events past its checkpoint, as metrics.jsonl drops its lines.

TensorBoard is on by default where the package is installed (one line says so
where it is not). W&B: ``--wandb offline`` writes RUN/wandb without a network
(``wandb sync`` later); ``online`` needs a login. The package is optional:
asking for W&B without it installed is an error before the run starts.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

WANDB_MODES = ("off", "offline", "online")


def check(tensorboard: bool, wandb: str) -> None:
    """Before any work: W&B, when asked for, is installed. (TensorBoard is on by
    default and skipped with one line where the package is missing.)"""
    if wandb not in WANDB_MODES:
        raise ValueError(f"--wandb {wandb!r}: choose one of {', '.join(WANDB_MODES)}")
    if wandb != "off" and importlib.util.find_spec("wandb") is None:
        raise ValueError(f"--wandb {wandb} needs the wandb package (pip install wandb), or "
                         "pass --wandb off")


class Watch:
    """Sinks for scalars and pictures; a no-op where nothing is enabled."""

    def __init__(self, run_dir: Path, tensorboard: bool, wandb: str, resume_step: int | None,
                 config: dict):
        self.tb = self.wb = None
        if tensorboard and importlib.util.find_spec("tensorboard") is None:
            print("no TensorBoard events: the tensorboard package is not installed (pip "
                  "install tensorboard; --no-tensorboard silences this)", file=sys.stderr)
            tensorboard = False
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step, flush_secs=30)
        if wandb != "off":
            import wandb as wb
            self.wb = wb.init(dir=str(run_dir), mode=wandb, config=config,
                              name=run_dir.name, resume="allow", id=_wandb_id(run_dir))

    def scalars(self, row: dict) -> None:
        step = int(row["step"])
        values = {k: float(v) for k, v in row.items()
                  if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
                  and np.isfinite(v)}  # null (non-finite) values are left out
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
        if self.wb is not None:
            self.wb.log(values, step=step)

    def views(self, batch, step: int, n: int = 4) -> None:
        """The first ``n`` samples of ``batch`` as the model sees them, captioned."""
        if self.tb is None and self.wb is None:
            return
        from pipelines.view_grid import draw, to_uint8
        params = {k: t.detach().float().cpu() for k, t in batch.params.items()}
        views = [to_uint8(v[:n]) for v in batch.views]
        picture = np.asarray(draw(views, params, n, header=None))
        if self.tb is not None:
            self.tb.add_image("views", picture, step, dataformats="HWC")
        if self.wb is not None:
            import wandb as wb
            self.wb.log({"views": wb.Image(picture)}, step=step)

    def close(self) -> None:
        """Idempotent (called at the end and at exit)."""
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wb is not None:
            self.wb.finish()
            self.wb = None


def _wandb_id(run_dir: Path) -> str:
    """One W&B run per run folder, kept across --resume (RUN/wandb-id)."""
    path = run_dir / "wandb-id"
    if not path.is_file():
        import secrets
        path.write_text(secrets.token_hex(8))
    return path.read_text().strip()
