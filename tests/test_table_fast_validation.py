"""TokenTable.validate's one-pass compiled check: True only for tables the numpy checks accept, so every
error stays the numpy checks' (column, first bad row, value)."""

from __future__ import annotations

import numpy as np
import pytest
from test_table import corrupt, make

from tokcal import TokenTable
from tokcal.errors import ValidationError

BAD = [{"label": (5, 500)}, {"label": (2, -4)}, {"top_logits": (7, np.nan)}, {"top_logits": (8, np.inf)},
       {"top_ids": (3, -1)}, {"top_ids": (6, 500)}, {"log_normalizer": (9, np.inf)}, {"label_logit": (1, np.nan)},
       {"label_logit": (2, 1e6)}, {"tail": (4, np.nan)}, {"tail": (0, np.inf)}]


@pytest.mark.parametrize("change", BAD)
def test_fast_check_defers_every_bad_table_to_the_numpy_checks(change):
    kw = corrupt(make(), **change)
    t = TokenTable(**kw, validate=False)
    assert not t._surely_valid()
    with pytest.raises(ValidationError) as fast:
        TokenTable(**kw)
    with pytest.raises(ValidationError) as slow:
        t._check_values()
    assert str(fast.value) == str(slow.value)


def test_fast_check_repeats_order_and_rounding():
    base = make()
    kw = corrupt(base)
    assert TokenTable(**kw, validate=False)._surely_valid()
    kw["top_ids"][11, 4] = kw["top_ids"][11, 9]  # a repeated id
    with pytest.raises(ValidationError, match="top_ids: row 11 repeats an id"):
        TokenTable(**kw)
    kw = corrupt(base)
    kw["top_logits"][3, 1] = kw["top_logits"][3, 0] + 1.0  # not sorted
    with pytest.raises(ValidationError, match="top_logits: row 3 is not sorted"):
        TokenTable(**kw)
    kw = corrupt(base)
    kw["label_logit"][0] = np.nextafter(kw["top_logits"][0, 0], np.float32(np.inf))  # within the rounding allowed
    t = TokenTable(**kw, validate=False)
    assert not t._surely_valid()
    TokenTable(**kw)  # valid: the numpy checks accept it
