"""trainer.run against a hostile configuration (issue 20, defects 8 and 9): every
numeric option and recipe value outside its documented finite range, a recipe too
short for its method, settings that contradict each other, a YAML alias bomb, odd
keys and a ``.YAML`` suffix. Each bad value is refused before any work: exit 2,
one line on stderr naming the key, the value and the range, no traceback, and no
run folder. In-process (``run.main``) for speed; two cases go through a real
process as a user would. Also the tools' numeric options (make_synthetic,
show_views) and plot_run on a metrics.jsonl holding a stray line or inf."""

import subprocess
import sys
import time

import pytest
import trainrun

from trainer import run
from trainer.config import Config, from_argv, parser

yaml = pytest.importorskip("yaml")


def _args(data, out, *extra) -> list[str]:
    """Fast settings; one step, should a bad value be accepted after all."""
    return trainrun.args(data, out, "--epochs", "1", "--max-steps", "1", "--no-tensorboard",
                         *extra)


def _refused(capsys, argv: list, out, *says: str) -> str:
    """run.main(argv) refuses with one line holding every one of ``says``."""
    rc = run.main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert rc == 2, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("trainer.run: error: "), err[-2000:]
    assert "Traceback" not in err
    for s in says:
        assert s in lines[0], lines[0]
    assert not out.exists(), "the run folder was created for a refused config"
    return lines[0]


# (flag, value, what the line must say: the key, the value as shown, the range)
OPTIONS = [
    ("--jitter", "nan,0.4,0.4,0.1", ["jitter", "nan", "[0.001, 10]"]),
    ("--jitter", "0.4,inf,0.4,0.1", ["jitter", "inf", "[0.001, 10]"]),
    ("--weight-decay", "nan", ["weight_decay=nan", "[0, 1]"]),
    ("--weight-decay", "-0.1", ["weight_decay=-0.1", "[0, 1]"]),
    ("--temperature", "-1", ["temperature=-1", "[0.01, 10], or 0 (the method's default)"]),
    ("--temperature", "1e-09", ["temperature=1e-09", "[0.01, 10]"]),
    ("--temperature", "1e9", ["temperature=1000000000", "[0.01, 10]"]),
    ("--target-momentum", "5", ["target_momentum=5", "(0, 1), or 0"]),
    ("--target-momentum", "1", ["target_momentum=1", "(0, 1)"]),
    ("--augself-crop", "-1", ["augself_crop=-1", "[0, 100]"]),
    ("--queue-size", "0", ["queue_size=0", "[1, 1048576]"]),
    ("--prototypes", "0", ["prototypes=0", "[1, 65536]"]),
    ("--proj-dim", "-1", ["proj_dim=-1", "[1, 32768], or 0 (the method's default)"]),
    ("--proj-hidden", "1000000", ["proj_hidden=1000000", "[1, 32768]"]),
    ("--pred-hidden", "-5", ["pred_hidden=-5", "[1, 32768]"]),
    ("--proj-layers", "100", ["proj_layers=100", "[1, 8]"]),
    ("--seed", "-1", ["seed=-1", "[0, 4294967295]"]),
    ("--seed", "4294967296", ["seed=4294967296", "[0, 4294967295]"]),
    ("--seed", "100000000000000000000", ["seed=100000000000000000000", "[0, 4294967295]"]),
    ("--lr", "1e6", ["lr=1000000", "(0, 100]"]),
    ("--size", "100000", ["size=100000", "[8, 1024]"]),
    ("--small-size", "100000", ["small_size=100000", "[8, 1024], or 0"]),
    ("--essl-size", "100000", ["essl_size=100000", "[8, 1024], or 0"]),
    ("--epochs", "0", ["epochs=0", "[1, 100000]"]),
    ("--batch-size", "1", ["batch_size=1", "[2, 65536]"]),
    ("--vicreg-coeffs", "nan,25,1", ["vicreg_coeffs='nan,25,1'", "[0, 1000]"]),
    ("--vicreg-coeffs", "25,25", ["vicreg_coeffs='25,25'", "3 comma-separated numbers"]),
    ("--momentum", "1", ["momentum=1", "[0, 1)"]),
    ("--warmup-epochs", "nan", ["warmup_epochs=nan", "[0, 100000]"]),
    ("--barlow-lambda", "-1", ["barlow_lambda=-1", "[0, 1]"]),
    ("--equimod-temperature", "0", ["equimod_temperature=0", "[0.01, 10]"]),
    ("--equimod-weight", "1e400", ["equimod_weight=inf", "[0, 100]"]),
    ("--essl-views", "0", ["essl_views=0", "[1, 16]"]),
    ("--essl-weight", "inf", ["essl_weight=inf", "[0, 100]"]),
    ("--freeze-prototypes", "-1", ["freeze_prototypes=-1", "[0, 1000000000]"]),
    ("--view-grid-every", "-1", ["view_grid_every=-1", "[1, 100000], or 0"]),
    ("--log-every", "0", ["log_every=0", "[1, 1000000000]"]),
    ("--ckpt-every", "-1", ["ckpt_every=-1", "[1, 1000000000], or 0"]),
    ("--max-steps", "-5", ["max_steps=-5", "[1, 1000000000], or 0 (run every epoch)"]),
    ("--max-bad-steps", "0", ["max_bad_steps=0", "[1, 1000000]"]),
    ("--workers", "100000", ["workers=100000", "[0, 256]"]),
    # not a number at all: argparse's message, as one line (not 40 lines of usage)
    ("--seed", "1e20", ["--seed", "'1e20'", "invalid int value"]),
]


@pytest.mark.parametrize("flag, value, says", OPTIONS, ids=[f"{f}={v}" for f, v, _ in OPTIONS])
def test_an_option_out_of_its_range_is_one_line(tiny_dataset, tmp_path, capsys, flag, value, says):
    out = tmp_path / "run"
    _refused(capsys, _args(tiny_dataset, out, flag, value), out, *says)


# (recipe, extra options, what the line must say); written to a YAML file, so
# .nan and .inf are YAML's NaN and infinity
RECIPES = [
    ("{all: {jitter: [.nan, 0.4, 0.4, 0.1]}}", [], ["recipe.all", "jitter=[nan, 0.4, 0.4, 0.1]",
                                                 "[0.001, 10]"]),
    ("{all: {jitter: [0.4, 0.4, 0.4, 0.6]}}", [], ["jitter=", "H in [0.001, 0.5]"]),
    ("{views: [{jitter: [.inf, 0.4, 0.4, 0.1]}, {}]}", [], ["recipe.views[0]", "jitter=[inf"]),
    ("{all: {blur_sigma: [1, 1.0e9]}}", [], ["blur_sigma=[1, 1000000000.0]", "(0, 100]"]),
    ("{all: {blur_sigma: [1, .inf]}}", [], ["blur_sigma=[1, inf]", "(0, 100]"]),
    ("{all: {blur_sigma: [0.1, 5], size: 8}}", ["--size", "8"], ["blur_sigma", "8 px"]),
    ("{all: {size: 100000}}", [], ["size=100000", "[8, 1024]"]),
    ("{all: {size: 8.5}}", [], ["size=8.5", "whole number"]),
    ("{all: {scale: [0, 1]}}", [], ["scale=[0, 1]", "(0, 1]"]),
    ("{all: {ratio: [.nan, 1]}}", [], ["ratio=[nan, 1]", "[0.1, 10]"]),
    ("{all: {flip_p: .nan}}", [], ["flip_p=nan", "[0, 1]"]),
    ("{all: {solarize_p: -0.5}}", [], ["solarize_p=-0.5", "[0, 1]"]),
    ("{all: {rotate_shift: 7}}", [], ["rotate_shift=7", "[-1, 3]"]),
    ("{all: {jitter: '0.4'}}", [], ["jitter='0.4'", "4 numbers"]),
    ("{views: [{}]}", ["--method", "simclr"], ["recipe.views", "1 view", "at least 2"]),
    ("{views: [{}]}", ["--method", "swav"], ["recipe.views", "1 view", "at least 2"]),
    ("{views: [{}]}", ["--method", "supervised", "--aux", "augself"],
     ["recipe.views", "1 view", "at least 2"]),
    ("{views: [" + ", ".join(["{}"] * 17) + "]}", [], ["recipe.views", "17 views", "[1, 16]"]),
]


@pytest.mark.parametrize("recipe, extra, says", RECIPES, ids=[r for r, _, _ in RECIPES])
def test_a_recipe_value_out_of_its_range_is_one_line(tiny_dataset, tmp_path, capsys, recipe,
                                                      extra, says):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"recipe: {recipe}\n")
    out = tmp_path / "run"
    _refused(capsys, [*_args(tiny_dataset, out, *extra), "--config", cfg], out, *says)


@pytest.mark.parametrize("extra, says", [
    (["--aux", "augself", "--augself-crop", "0", "--augself-color", "0"],
     ["augself_*", "every weight is 0"]),
    (["--aux", "augself", "--augself-rot", "1"], ["augself_rot=1", "rotate: true"]),
    (["--aux", "condproj", "--method", "supervised"], ["aux='condproj'", "supervised"]),
    # a hue strength so small that AugSelf's colour code (h / 2H) overflows float32
    (["--aux", "augself", "--jitter", "0.4,0.4,0.4,1e-39"], ["jitter='0.4,0.4,0.4,1e-39'",
                                                             "H in [0.001, 0.5]"]),
])
def test_settings_that_contradict_each_other_are_refused_before_any_work(
        tiny_dataset, tmp_path, capsys, extra, says):
    out = tmp_path / "run"
    _refused(capsys, _args(tiny_dataset, out, *extra), out, *says)


def test_json_nan_infinity_and_huge_numbers_are_refused(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    # (not lr: the command line's --lr would win over the file's)
    for doc, says in ((f'{{"barlow_lambda": 1{"0" * 400}}}', ["barlow_lambda=", "[0, 1]"]),
                      ('{"recipe": {"all": {"jitter": [Infinity, 0, 0, 0]}}}', ["jitter=[inf"]),
                      ('{"weight_decay": NaN}', ["weight_decay=nan"])):
        cfg = tmp_path / "c.json"
        cfg.write_text(doc)
        line = _refused(capsys, [*_args(tiny_dataset, out), "--config", cfg], out, *says)
        assert len(line) < 400, line


def test_odd_keys_are_named_not_crashed_on(tiny_dataset, tmp_path, capsys):
    """Keys of several types (YAML allows ints, booleans, nulls) cannot be sorted
    together; a key with a newline must not break the one line."""
    out = tmp_path / "run"
    for text, says in (("1: 2\nfoo: 3\n", ["unknown option(s)", "1", "foo"]),
                       ("recipe: {all: {1: 2, foo: 3}}\n", ["unknown view setting(s)", "foo"]),
                       ('"a\\nb": 1\n', ["unknown option(s)", "'a\\nb'"])):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(text)
        _refused(capsys, [*_args(tiny_dataset, out), "--config", cfg], out, *says)


def _bomb(levels: int = 9) -> str:
    """A YAML flow list of nine anchored lists, each nine aliases of the one before:
    the last holds 9**9 (387 million) ones once expanded; a few hundred bytes as
    written and as loaded (YAML shares the aliased lists)."""
    names = "abcdefghi"[:levels]
    items = [f"&{names[0]} [{', '.join(['1'] * 9)}]"]
    items += [f"&{name} [{', '.join(['*' + prev] * 9)}]" for prev, name in zip(names, names[1:])]
    return f"[{', '.join(items)}]"


@pytest.mark.parametrize("key, text", [
    ("jitter", "recipe: {all: {jitter: BOMB}}"),  # a setting's value
    ("recipe.all", "recipe: {all: BOMB}"),         # a view's settings
    ("recipe.views", "recipe: {views: [{}, BOMB]}"),
    ("recipe", "recipe: BOMB"),                    # the option's type
    ("lr", "lr: BOMB"),
])
def test_a_yaml_alias_bomb_is_refused_in_a_bounded_line(tiny_dataset, tmp_path, capsys, key,
                                                        text):
    """Defect 9: every quoted value is bounded (cli.shown) and nothing expands the
    value on the way to refusing it (today: a 312 MB message)."""
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(text.replace("BOMB", _bomb()) + "\n")
    out = tmp_path / "run"
    t0 = time.perf_counter()
    line = _refused(capsys, [*_args(tiny_dataset, out), "--config", cfg], out, key)
    assert len(line) < 600 and time.perf_counter() - t0 < 10, len(line)


def test_a_config_file_suffix_is_case_blind(tmp_path):
    for name in ("c.YAML", "c.Yml", "c.yml"):
        path = tmp_path / name
        path.write_text("method: simclr\nlr: 0.5\n")
        cfg = from_argv(["--data", "x", "--config", str(path)])
        assert cfg.method == "simclr" and cfg.lr == 0.5, name


def test_help_shows_every_numeric_range():
    text = " ".join(parser().format_help().split())
    for name, t in Config.__annotations__.items():
        if t in ("int", "float"):
            rng = Config.__dataclass_fields__[name].metadata.get("range")
            assert rng is not None, name
            assert f"range {rng}" in text, name
    assert "range [8, 1024]" in text and "range [0, 4294967295]" in text


@pytest.mark.parametrize("argv, says", [
    (["--jitter", "nan,0.4,0.4,0.1"], "jitter"),
    (["--config", "{bomb}"], "recipe"),
])
def test_a_real_process_prints_one_line(tiny_dataset, tmp_path, argv, says):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(f"recipe: {{all: {{jitter: {_bomb()}}}}}\n")
    out = tmp_path / "run"
    argv = [a.replace("{bomb}", str(bomb)) for a in argv]
    p = subprocess.run([sys.executable, "-m", "trainer.run", *_args(tiny_dataset, out),
                        *argv], cwd=trainrun.ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1, p.stderr[-2000:]
    assert says in p.stderr and "Traceback" not in p.stderr and len(p.stderr) < 600
    assert not out.exists()


def test_yaml_numbers_in_exponent_form_are_numbers(tmp_path):
    """PyYAML reads 1e-4 (no dot) and 1.0e9 (no exponent sign) as strings (YAML
    1.1): a user's weight_decay: 1e-4 was refused as "must be float, got str"."""
    path = tmp_path / "c.yaml"
    path.write_text("weight_decay: 1e-4\nlr: 5E-1\nrecipe: {all: {blur_sigma: [1.0e-1, 2e0]}}\n")
    cfg = from_argv(["--data", "x", "--config", str(path)])
    assert cfg.weight_decay == 1e-4 and cfg.lr == 0.5
    assert cfg.recipe == {"all": {"blur_sigma": [0.1, 2.0]}}


@pytest.mark.parametrize("tool, argv, says", [
    ("make_synthetic", ["--seed", "-1"], ["--seed", "[0, 4294967295]"]),
    ("make_synthetic", ["--quality", "500"], ["--quality", "[1, 100]"]),
    ("make_synthetic", ["--workers", "0"], ["--workers", "[1, 256]"]),
    ("make_synthetic", ["--n-train", "nan"], ["--n-train", "[0, 10000000]"]),
    ("show_views", ["--n", "0"], ["--n", "[1, 256]"]),
    ("show_views", ["--seed", "-1"], ["--seed", "[0, 4294967295]"]),
    ("show_views", ["--size", "100000"], ["--size", "[8, 1024]"]),
])
def test_a_tools_numeric_option_out_of_range_is_refused_before_any_work(
        tiny_dataset, tmp_path, capsys, tool, argv, says):
    """argparse refuses it (exit 2, its usage line and one error line), nothing
    written; today some are accepted (quality 500, workers 0 meaning all cores),
    others fail late ("expected non-negative integer", a ZeroDivisionError)."""
    from tools import make_synthetic, show_views

    out = tmp_path / "out"
    if tool == "make_synthetic":
        call = [make_synthetic.main, ["--out", str(out), "--n-train", "3", "--n-test", "0",
                                      "--quiet", *argv]]
    else:
        call = [show_views.main, ["--data", str(tiny_dataset), "--out", str(out),
                                  "--backend", "torchvision", "--size", "16", *argv]]
    with pytest.raises(SystemExit) as exit_:
        call[0](call[1])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err, err
    assert all(s in err.splitlines()[-1] for s in says), err
    assert not out.exists()


def test_plot_run_names_a_bad_line_and_skips_non_finite_values(tmp_path, capsys):
    from pipelines import cli
    from tools import plot_run

    def plot(*argv):
        return cli.run(plot_run.main, "plot_run", [str(a) for a in argv])

    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n3\n')
    assert plot(run_dir, "--out", tmp_path / "a.png") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "line 2" in err and "not a JSON object" in err, err
    # NaN and inf (a skipped step's loss) and a value near float's limit are gaps
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0, "lr": 0.1}\n'
                                           '{"step": 2, "loss": NaN, "lr": 1e308}\n'
                                           '{"step": 3, "loss": -Infinity, "lr": 0.2}\n')
    assert plot(run_dir, "--out", tmp_path / "b.png") == 0
    assert (tmp_path / "b.png").stat().st_size > 0
