"""The config takes its facts from their one source (issue 23, finding 4):

- the choices of --method, --aux, --backend and --preset are the keys of the
  registries that build them (METHODS, AUX, BACKENDS, PRESETS), so a method added
  to METHODS is a choice with nothing else to edit;
- a method's hyper-parameters are the Config's fields, read by the method: change
  one in the Config and the built method has it;
- --jitter and --vicreg-coeffs are parsed once, at the config's boundary, into
  typed tuples (hypothesis: valid text round-trips, hostile text is one ValueError
  naming the option), and a config.json written before they were typed (the text)
  still resumes.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import trainrun

from pipelines.build import BACKENDS
from pipelines.recipe import PRESETS, parse_jitter, preset
from trainer import methods
from trainer.build import AUX, build_objective
from trainer.config import Config, from_argv, from_dict, parser, to_dict
from trainer.methods import METHODS

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _choices(flag: str) -> list[str]:
    (action,) = [a for a in parser()._actions if flag in a.option_strings]
    return list(action.choices)


# ---- choices are the registries' keys ---------------------------------------

def test_the_command_lines_choices_are_the_registries_keys():
    assert _choices("--method") == list(METHODS)
    assert _choices("--aux") == list(AUX)
    assert _choices("--backend") == ["auto", *BACKENDS]
    assert _choices("--preset") == ["auto", *PRESETS]


def test_a_method_or_aux_added_to_its_registry_is_a_choice(monkeypatch):
    with pytest.raises(ValueError, match="--method: invalid choice: 'simsiam2'"):
        from_argv(["--data", "x", "--method", "simsiam2"])
    monkeypatch.setitem(METHODS, "simsiam2", methods.SimSiam)
    monkeypatch.setitem(AUX, "nothing", AUX["none"])
    cfg = from_argv(["--data", "x", "--method", "simsiam2", "--aux", "nothing"])
    assert (cfg.method, cfg.aux) == ("simsiam2", "nothing")
    assert from_dict({"data": "x", "method": "simsiam2"}).method == "simsiam2"  # a file, too
    objective = build_objective(Config(data="-", backbone="small", size=32, method="simsiam2",
                                       aux="nothing", proj_hidden=16, proj_dim=16,
                                       pred_hidden=8), preset("augself", 32), num_classes=10)
    assert type(objective.method) is methods.SimSiam and objective.aux is None


# ---- a method's hyper-parameters are the Config's ----------------------------

def _linears(net) -> list[torch.nn.Linear]:
    return [m for m in net.modules() if isinstance(m, torch.nn.Linear)]


# Config field -> (a value other than its default, the methods that read it, what a
# built method holds of it)
FOLLOWS = {
    "proj_hidden": (24, ["simsiam", "simclr", "moco", "byol", "swav", "barlow", "vicreg"],
                    lambda m: _linears(m.projector)[0].out_features),
    "proj_dim": (12, ["simsiam", "simclr", "moco", "byol", "swav", "barlow", "vicreg"],
                 lambda m: _linears(m.projector)[-1].out_features),
    "proj_layers": (4, ["simsiam", "simclr", "moco", "byol", "swav", "barlow", "vicreg"],
                    lambda m: len(_linears(m.projector))),
    "pred_hidden": (6, ["simsiam", "byol"], lambda m: _linears(m.predictor)[0].out_features),
    "temperature": (0.37, ["simclr", "moco", "swav"], lambda m: m.temperature),
    "target_momentum": (0.9, ["moco"], lambda m: m.m),
    "queue_size": (40, ["moco"], lambda m: len(m.queue)),
    "prototypes": (7, ["swav"], lambda m: m.prototypes.out_features),
    "freeze_prototypes": (3, ["swav"], lambda m: m.freeze),
    "barlow_lambda": (0.02, ["barlow"], lambda m: m.lambd),
    "vicreg_coeffs": ((5.0, 6.0, 0.5), ["vicreg"], lambda m: m.coeffs),
}
FOLLOWS_BYOL_MOMENTUM = (0.9, lambda m: m.m0)  # BYOL's base momentum: target_momentum too


@pytest.mark.parametrize("name", sorted(FOLLOWS))
def test_a_methods_hyper_parameters_follow_the_config(name):
    value, readers, held = FOLLOWS[name]
    narrow = {"proj_hidden": 16, "proj_dim": 16, "pred_hidden": 8}
    for method in readers:
        cfg = Config(data="-", backbone="small", size=32, method=method,
                     **{**narrow, name: value})
        built = build_objective(cfg, preset("augself", 32), num_classes=10).method
        assert held(built) == value, (method, name)
        default = build_objective(Config(data="-", backbone="small", size=32, method=method,
                                         **narrow), preset("augself", 32), num_classes=10).method
        assert held(default) != value, (method, name)  # the value came from the Config
    if name == "target_momentum":
        cfg = Config(data="-", backbone="small", size=32, method="byol", target_momentum=0.9)
        built = build_objective(cfg, preset("augself", 32), num_classes=10).method
        assert FOLLOWS_BYOL_MOMENTUM[1](built) == FOLLOWS_BYOL_MOMENTUM[0]


def test_every_method_reads_only_config_fields():
    """A method built from a stand-in that holds only the Config's fields: an
    attribute it reads that the Config lacks fails here (AttributeError)."""
    from types import SimpleNamespace

    fields = dict(vars(Config(data="-", proj_hidden=16, proj_dim=16, pred_hidden=8)))
    for cls in METHODS.values():
        cls(torch.nn.Linear(4, 4), 4, SimpleNamespace(**fields), large_images=False,
            num_classes=3)


# ---- several numbers: parsed once, typed ------------------------------------

STRENGTH = st.one_of(st.just(0.0), st.floats(0.001, 10))
HUE = st.one_of(st.just(0.0), st.floats(0.001, 0.5))
COEFF = st.floats(0, 1000)
JITTERS = st.tuples(STRENGTH, STRENGTH, STRENGTH, HUE)
COEFFS = st.tuples(COEFF, COEFF, COEFF)


def _text(vals, form: str) -> str:
    fmt = {"repr": repr, "g17": lambda x: f"{x:.17g}", "e": lambda x: f"{x:.17e}"}[form]
    return ",".join(fmt(x) for x in vals)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(jitter=JITTERS, coeffs=COEFFS, form=st.sampled_from(["repr", "g17", "e"]))
def test_valid_numbers_round_trip_to_the_typed_tuple(jitter, coeffs, form):
    # the command line's text, a file's list and a typed tuple: one value
    for value in (_text(jitter, form), list(jitter), jitter):
        assert Config(jitter=value).jitter == jitter
    for value in (_text(coeffs, form), list(coeffs), coeffs):
        assert Config(vicreg_coeffs=value).vicreg_coeffs == coeffs
    assert parse_jitter(_text(jitter, form)) == jitter
    cfg = Config(jitter=_text(jitter, form), vicreg_coeffs=_text(coeffs, form))
    assert type(cfg.jitter) is tuple and all(type(x) is float for x in cfg.jitter)
    # config.json holds lists; read back, the same Config
    assert from_dict(json.loads(json.dumps({**to_dict(cfg), "data": "x"}))) == \
        Config(**{**vars(cfg), "data": "x"})


def _float_or_none(text: str):
    try:
        return float(text)
    except ValueError:
        return None


def _admitted(text: str, ranges) -> bool:
    """The oracle: len(ranges) comma-separated numbers (as Python's float() reads
    them), each finite and in its (lo, hi) range or 0 where 0 means none."""
    parts = text.split(",")
    if len(parts) != len(ranges):
        return False
    for part, (lo, hi, zero) in zip(parts, ranges):
        x = _float_or_none(part)
        if x is None or not math.isfinite(x) or not ((zero and x == 0) or lo <= x <= hi):
            return False
    return True


JITTER_RANGES = [(0.001, 10, True)] * 3 + [(0.001, 0.5, True)]
COEFF_RANGES = [(0, 1000, False)] * 3
HOSTILE_NUMBER = st.one_of(
    st.sampled_from(["nan", "NaN", "inf", "-inf", "1e400", "-1", "-0.5", "1e-39", "0.6",
                     "1001", "10.5", "", " ", "x", "0x10", "1,2", "None", "--1", "1e", "١"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=6))


@settings(max_examples=400, deadline=None, derandomize=True)
@given(parts=st.lists(HOSTILE_NUMBER, min_size=0, max_size=6),
       option=st.sampled_from(["jitter", "vicreg_coeffs"]))
def test_hostile_numbers_are_one_clear_error_naming_the_option(parts, option):
    text = ",".join(parts)
    ranges = JITTER_RANGES if option == "jitter" else COEFF_RANGES
    if option == "jitter" and text == "":
        assert Config(jitter=text).jitter is None  # empty: the preset's
        return
    arg = "--" + option.replace("_", "-") + "=" + text  # one word: text may start with -
    if _admitted(text, ranges):
        assert len(getattr(from_argv(["--data", "x", arg]), option)) == len(ranges)
        return
    with pytest.raises(ValueError) as e:
        from_argv(["--data", "x", arg])
    msg = str(e.value)
    assert msg.startswith(f"command line: {option}=") and "\n" not in msg and len(msg) < 400
    assert "out of range: expected" in msg and ("[0.001, 10]" in msg or "[0, 1000]" in msg)


@pytest.mark.parametrize("name, value", [
    ("jitter", [float("nan"), 1, 1, 0]), ("jitter", [1, 1, 1]), ("jitter", [True, 0, 0, 0]),
    ("jitter", ["1", "1", "1", "0"]), ("jitter", [[1], 1, 1, 0]), ("jitter", 3),
    ("jitter", {"a": 1}), ("jitter", [10 ** 400, 0, 0, 0]), ("jitter", [-1, 0, 0, 0]),
    ("vicreg_coeffs", None), ("vicreg_coeffs", [25, 25]), ("vicreg_coeffs", [25, 25, 1e9]),
    ("vicreg_coeffs", "25;25;1")])
def test_a_files_bad_numbers_are_named(name, value, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({name: value}))
    with pytest.raises(ValueError) as e:
        from_argv(["--data", "x", "--config", str(path)])
    assert str(e.value).startswith(f"{path} + command line: {name}=")
    assert "is out of range: expected" in str(e.value) and "\n" not in str(e.value)


# ---- a config.json of the text form still resumes ---------------------------

def test_a_config_json_holding_the_text_form_resumes(tiny_dataset, tmp_path):
    from trainer import run

    out = tmp_path / "r"
    argv = trainrun.args(tiny_dataset, out, "--method", "vicreg", "--epochs", "1",
                         "--max-steps", "1", "--no-tensorboard", "--jitter", "0.4,0.4,0.4,0.2",
                         "--vicreg-coeffs", "20,25,1")
    assert run.main(argv) == 0
    doc = json.loads((out / "config.json").read_text())
    assert doc["config"]["jitter"] == [0.4, 0.4, 0.4, 0.2]  # written typed, as JSON lists
    assert doc["config"]["vicreg_coeffs"] == [20.0, 25.0, 1.0]
    # as the code before typed tuples wrote it
    doc["config"].update(jitter="0.4,0.4,0.4,0.2", vicreg_coeffs="20,25,1")
    (out / "config.json").write_text(json.dumps(doc))
    cfg = from_argv(["--out", str(out), "--resume", "--max-steps", "2"])
    assert cfg.jitter == (0.4, 0.4, 0.4, 0.2) and cfg.vicreg_coeffs == (20.0, 25.0, 1.0)
    # the same numbers, written otherwise, are no change; other numbers are
    same = from_argv(["--out", str(out), "--resume", "--jitter", "0.40,0.4,0.4,2e-1",
                      "--vicreg-coeffs", "20.0,25,1"])
    assert same == from_argv(["--out", str(out), "--resume"])
    with pytest.raises(ValueError, match="--resume: jitter differ"):
        from_argv(["--out", str(out), "--resume", "--jitter", "0.4,0.4,0.4,0.3"])
    assert run.main(["--out", str(out), "--resume", "--max-steps", "2", "--no-progress"]) == 0
    assert len(trainrun.losses(out)) == 2
