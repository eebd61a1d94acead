"""The `make bench` driver: it finds each benchmark's JSON in its output and collects every ratio."""
from __future__ import annotations

import pytest

from adakd.bench import all as bench_all


def test_last_json_skips_log_lines_and_ratios_are_flattened():
    text = 'loading {not json}\n{"ratios": {"fused_time": 1.02, "n": 3}, "pairs": {"a": {"time_ratio": 0.9}}}\n'
    result = bench_all.last_json(text)
    assert bench_all.ratios_of("loss", result) == {"loss.ratios.fused_time": 1.02, "loss.ratios.n": 3,
                                                    "loss.pairs.a.time_ratio": 0.9}
    with pytest.raises(ValueError):
        bench_all.last_json("no json here")


def test_every_benchmark_has_a_quick_variant_and_unknown_names_are_refused(capsys):
    assert set(bench_all.QUICK) == set(bench_all.BENCHES)
    with pytest.raises(SystemExit):
        bench_all.main(["--only", "loss,nope"])
    assert "unknown benchmark" in capsys.readouterr().err
