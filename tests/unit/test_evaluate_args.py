"""``python -m rtmdet_exp.evaluate``'s own options: bad values are refused before anything loads."""

from __future__ import annotations

import pytest

from rtmdet_exp.cli.args import UsageError
from rtmdet_exp.cli.evaluate import OPTIONS, check_args


def defaults(**given: object) -> dict:
    return {**{name: option.default for name, option in OPTIONS.items()}, "checkpoint": "x.pt", **given}


def test_defaults_pass_and_precision_follows_the_run() -> None:
    check_args(defaults())
    assert OPTIONS["precision"].default == "run"


@pytest.mark.parametrize(("given", "message"), [
    ({"precision": "fp16"}, "precision must be run, fp32 or bf16, got 'fp16'"),
    ({"weights": "last"}, "weights must be ema or model, got 'last'"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"score_thr": 1.5}, r"score_thr must be in \[0, 1\], got 1.5"),
])
def test_bad_values_name_the_option(given: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        check_args(defaults(**given))
