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
