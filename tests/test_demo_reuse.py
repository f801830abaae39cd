"""tools.demo reuses a finished run only when its saved config is the one it would
train: the comparison is of config.json's form (to_dict), so typed fields (jitter,
vicreg_coeffs: tuples in the Config, lists in JSON) compare equal after a round
trip, and a changed setting does not."""

import json

from tools.demo import _same
from trainer.config import Config, to_dict


def test_a_saved_config_reads_back_as_the_same_run():
    cfg = Config(data="d", out="o", method="simsiam", jitter=(0.4, 0.4, 0.4, 0.2))
    saved = json.loads(json.dumps(to_dict(cfg)))
    assert _same(saved, to_dict(cfg))
    assert not _same(saved, to_dict(Config(data="d", out="o", method="simsiam",
                                           jitter=(0.4, 0.4, 0.4, 0.1))))


def test_the_demo_reads_rates_past_the_knn_lines():
    from tools.demo import _rates

    lines = [{"step": 1, "images_per_s": 5.0}, {"step": 2, "images_per_s": 9.0},
             {"step": 2, "epoch": 1.0, "knn": 0.3, "knn_s": 1.0},
             {"step": 3, "images_per_s": 7.0}]
    assert _rates(lines) == [7.0, 9.0]
    assert _rates([{"step": 1, "knn": 0.1}]) == [0.0]
