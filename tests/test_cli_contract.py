"""Every command-line tool keeps one contract (pipelines/cli.py): bad input
gets one line naming the thing and the problem, a non-zero exit and no
traceback (unless --debug), and nothing already written is damaged, a full
disk included (simulated for real with RLIMIT_FSIZE: the OS refuses writes
past the limit, as it does when a disk is full)."""

import hashlib
import resource
import signal
import subprocess
import sys

import pytest
from conftest import NO_BETON, ROOT

from pipelines import cli


def tool(module: str):
    import importlib
    return importlib.import_module(module).main


BAD = [  # (module, argv, what the line must say)
    ("tools.convert_dataset", ["/nonexistent/src", "--out", "{tmp}/o", *NO_BETON],
     "/nonexistent/src"),
    ("tools.convert_dataset", ["{tmp}", "--out", "/etc/hostname", *NO_BETON], "/etc/hostname"),
    ("tools.convert_dataset", ["{tmp}/empty", "--out", "{tmp}/o", *NO_BETON], "empty"),
    ("tools.show_views", ["--data", "/nonexistent/d", "--out", "{tmp}/v.png"], "/nonexistent/d"),
    ("tools.evaluate", ["/nonexistent/run", "--train", "{tmp}", "--test", "{tmp}"],
     "/nonexistent/run"),
    ("tools.make_synthetic", ["--out", "/etc/hostname"], "/etc/hostname"),
    ("trainer.run", ["--data", "/nonexistent/d"], "/nonexistent/d"),
    ("trainer.run", ["--data", "{tmp}", "--out", "{tmp}/r", "--resume"],
     "{tmp}/r/config.json does not exist; nothing to resume"),
    ("trainer.run", ["--config", "{tmp}/bad.json"], "bad.json"),
]


@pytest.mark.parametrize("module,argv,names", BAD, ids=[f"{m}-{i}" for i, (m, *_) in
                                                       enumerate(BAD)])
def test_bad_input_is_one_line_and_a_nonzero_exit(module, argv, names, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.json").write_text("{not json")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    names = names.replace("{tmp}", str(tmp_path))
    rc = cli.run(tool(module), module, argv)
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert "Traceback" not in err and names in err, err
    assert len(err.splitlines()) <= 3, err  # the line (argparse adds its usage lines)


def test_internal_error_is_one_line_and_debug_shows_the_traceback(capsys):
    def broken(argv):
        return {}["missing"] if "--boom" in argv else 0

    def buggy(argv):
        raise TypeError("a bug")

    assert cli.run(buggy, "x", []) == 1
    err = capsys.readouterr().err
    assert "internal error (TypeError: a bug)" in err and "--debug" in err
    with pytest.raises(TypeError):
        cli.run(buggy, "x", ["--debug"])
    assert cli.run(broken, "x", ["--boom"]) == 1  # anticipated (LookupError): plain error
    assert "x: error:" in capsys.readouterr().err


def _limited(limit: int):
    def pre():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
    return pre


def _digest(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_disk_full_while_converting_keeps_the_earlier_outputs(tmp_path):
    from tools import convert_dataset, make_synthetic

    make_synthetic.generate(tmp_path / "img", (48, 48), 60, 0, seed=1, quiet=True)
    out = tmp_path / "out"
    assert convert_dataset.main([str(tmp_path / "img"), "--split", "train", "--out", str(out),
                                 "--quiet", "--no-beton"]) == 0
    before = _digest(out)
    p = subprocess.run([sys.executable, "-m", "tools.convert_dataset", str(tmp_path / "img"),
                        "--split", "train", "--out", str(out), "--overwrite", "--quiet",
                        "--no-beton", "--quality", "99", "--max-res", "40"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       preexec_fn=_limited(20_000))
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert "disk full" in p.stderr and str(out) in p.stderr
    assert _digest(out) == before  # nothing under a final name changed
    assert not [x for x in out.iterdir() if x.name.startswith(".partial-")]


def test_disk_full_while_checkpointing_keeps_the_last_checkpoint(small_dataset, tmp_path):
    out = tmp_path / "run"
    args = ["--data", str(small_dataset), "--out", str(out), "--backend", "torchvision",
            "--backbone", "small", "--size", "16", "--batch-size", "16", "--epochs", "1",
            "--workers", "0", "--device", "cpu", "--no-progress", "--ckpt-every", "2"]
    p = subprocess.run([sys.executable, "-m", "trainer.run", *args, "--max-steps", "2"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    before = (out / "checkpoint.pt").read_bytes()
    limit = len(before) // 2  # config and metrics fit; a checkpoint does not
    p = subprocess.run([sys.executable, "-m", "trainer.run", "--out", str(out), "--resume",
                        "--max-steps", "6", "--no-progress", "--workers", "0"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       preexec_fn=_limited(limit))
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert f"cannot write {out / 'checkpoint.pt'}" in p.stderr and "disk full" in p.stderr
    assert (out / "checkpoint.pt").read_bytes() == before
    assert not [x for x in out.iterdir() if ".tmp-" in x.name]
