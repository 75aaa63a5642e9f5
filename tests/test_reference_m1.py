"""experiments/reference_m1.py: its candidates are valid configs of the size their names give, with
the context, BOS and data the issue asks for (the training itself is an experiment, not a test)."""

from __future__ import annotations

import pytest

from experiments import reference_m1 as ref
from pcomp.config import Config
from pcomp.models.transformer import count_params

CORPUS = {"path": "docs.jsonl", "eval_fraction": 0.0544}


@pytest.mark.parametrize("name, size", [("m1-500k", 5e5), ("m1-1m", 1e6), ("m1-3m", 3e6)])
def test_candidates_are_valid_configs_of_their_size(name, size):
    cfg = Config.preset("m1-3m").override(*ref.overrides(name, CORPUS, steps=1000), "data.tokenizer=bytes",
                                          "data.bos_first=true").validate()
    n = count_params(cfg.model)
    assert 0.7 * size <= n <= 1.3 * size, n
    assert cfg.model.name == name and cfg.data.seq_len == cfg.model.max_seq_len == ref.CONTEXT >= 512
    assert cfg.data.source == "docs.jsonl" and cfg.data.eval_fraction == 0.0544
    assert (cfg.training.steps, cfg.training.warmup_steps, cfg.training.eval_every) == (1000, 50, 250)


def test_unknown_candidate_is_a_clear_error(capsys):
    with pytest.raises(SystemExit, match="unknown candidate 'm1-9m': expected one of m1-500k, m1-1m, m1-3m"):
        ref.main(["--train", "m1-9m"])
