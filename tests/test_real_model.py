"""Real-model tier: the built-in SmolLM2-135M on the built-in Wikipedia text."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli


@pytest.mark.slow
def test_default_model_reference_is_sane_and_int8_beats_nf4(tmp_path):
    out = tmp_path / "cmp"
    res = run_cli("compare", "--methods", "bnb-int8,bnb-nf4", "--out", str(out), "--windows", "2", "--no-speed", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    result = json.loads((out / "compare.json").read_text())
    # SmolLM2-135M scores about 23 on Wikipedia prose (REFERENCE s.5); our excerpt and 512-token windows land nearby.
    assert 10 < result["protocol"]["reference_ppl"] < 45
    rows = {r["method"]: r for r in result["rows"]}
    assert rows["bnb-int8"]["kld_mean"] < rows["bnb-nf4"]["kld_mean"]
    assert rows["bnb-int8"]["top1_agreement"] > rows["bnb-nf4"]["top1_agreement"]
    assert 134_000_000 < result["model"]["params"] < 135_000_000
