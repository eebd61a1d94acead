"""The peer benchmark's harness at toy sizes: adakd's own cases in-process, the driver with the peers
reported as skipped (whether or not they are installed here), the JSON shape, and, where a peer is
installed, its value and gradient against adakd's (skipped where it is absent)."""

from __future__ import annotations

import io
import json
import math

import pytest

from adakd.bench import peer_cases, peers

TINY = ["--n", "24", "--v", "96", "--h-student", "8", "--h-teacher", "12", "--chunk", "7", "--reps", "2"]
OURS = [c for c, spec in peer_cases.CASES.items() if spec.peer is None]


def _installed(peer: str) -> bool:
    return peer_cases.peer_missing(peer) is None


def test_adakd_cases_agree_in_process():
    args = peers.parse_args(TINY)
    values = {}
    for case in OURS:
        runner = peers.Runner(args, case)
        out = runner.run()
        assert out["time_s"] > 0 and runner.peak_mb() >= 0
        values[case] = out["loss"]
    assert values["adakd_fused"] == pytest.approx(values["adakd_reference"], rel=1e-5)
    assert values["adakd_chunked"] == pytest.approx(values["torch_full"], rel=1e-5)
    assert values["adakd_fused_adakd"] != values["adakd_fused"]  # LATF + IDTS change the loss


def test_inputs_are_the_same_in_every_process():
    a = peer_cases.make_inputs("jsd", 5, 7, 3, 4, seed=3)
    b = peer_cases.make_inputs("jsd", 5, 7, 3, 4, seed=3)
    assert all(bool((a[k] == b[k]).all()) for k in a)


def test_driver_reports_missing_peers_as_skipped(monkeypatch):
    monkeypatch.setattr(peers, "peer_missing",
                        lambda peer: None if peer is None else f"{peer_cases.PEER_DISTS[peer]} not installed (test)")
    cases = ["adakd_fused", "adakd_fused_adakd", "liger_fused", "trl_naive", "trl_distill", "torchtune_chunked",
             "adakd_chunked"]
    result = peers.run_benchmark(peers.parse_args([*TINY, "--cases", *cases]))
    json.loads(json.dumps(result))  # one JSON object
    assert {"config", "machine", "cases", "floor", "ratios", "value_checks", "targets", "met"} <= set(result)
    for case in ("liger_fused", "trl_naive", "trl_distill", "torchtune_chunked"):
        assert result["cases"][case]["status"] == "skipped"
        assert "not installed" in result["cases"][case]["reason"]
        assert "time_s" not in result["cases"][case] and "peak_mb" not in result["cases"][case]
        assert result["value_checks"][case]["status"] == "skipped"
    for name, meas, base in peer_cases.RATIOS:
        r = result["ratios"][name]
        if {meas, base} & {"liger_fused", "trl_naive", "trl_distill", "torchtune_chunked"}:
            assert r["status"] == "skipped" and "not installed" in r["reason"]  # never a 0
            assert "time" not in r
        elif meas in cases and base in cases:
            assert r["status"] == "ok" and r["time"] > 0 and r["time_alternated"]
        else:
            assert r["status"] == "skipped"
    assert result["ratios"]["adakd_fused_adakd_vs_adakd_fused"]["status"] == "ok"
    assert result["met"] == {key: None for key in peer_cases.TARGETS}  # not the targets' size: not judged
    # the floor: dW + dh + 3 chunks of fp32 logits at adakd's chunk; the fused cases as multiples of it
    fl = result["floor"]
    assert fl["mb"] == pytest.approx((96 * 8 * 4 + 24 * 8 * 4 + 3 * 7 * 96 * 4) / 2**20, abs=0.05)
    assert set(fl["memory_ratio"]) == {"adakd_fused", "adakd_fused_adakd"}
    assert result["ratios"]["adakd_fused_adakd_vs_floor"]["memory"] == fl["memory_ratio"]["adakd_fused_adakd"]
    table = peers.markdown(result)
    assert "skipped: liger-kernel not installed" in table and "| adakd fused, AdaKD off |" in table
    assert "memory floor (dW" in table and "| adakd_fused_adakd_vs_floor | |" in table


def test_import_failure_is_a_skip(monkeypatch, capsys):
    def broken(peer):
        raise ImportError("no module named triton (test)")

    monkeypatch.setattr(peer_cases, "load_peer", broken)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert peers.serve(peers.parse_args([*TINY, "--worker", "liger_fused"])) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert "import failed" in line["skipped"] and "triton" in line["skipped"]


def test_targets_are_judged_at_their_size_only():
    ratio = {"adakd_fused_adakd_vs_adakd_fused": {"status": "ok", "time": 1.05, "memory": 2.0},
             "adakd_fused_adakd_vs_liger_fused": {"status": "skipped", "reason": "liger-kernel not installed"}}
    met = peers.judge_targets(ratio, peer_cases.TARGET_SIZE)
    assert met == {"adakd_fused_adakd_vs_adakd_fused.time": True, "adakd_fused_adakd_vs_liger_fused.memory": None,
                   "adakd_fused_adakd_vs_floor.memory": None}
    ratio["adakd_fused_adakd_vs_floor"] = {"status": "ok", "time": None, "memory": 1.95}
    assert peers.judge_targets(ratio, peer_cases.TARGET_SIZE)["adakd_fused_adakd_vs_floor.memory"] is True
    ratio["adakd_fused_adakd_vs_floor"]["memory"] = 2.2
    assert peers.judge_targets(ratio, peer_cases.TARGET_SIZE)["adakd_fused_adakd_vs_floor.memory"] is False
    ratio["adakd_fused_adakd_vs_adakd_fused"]["time"] = 1.2
    assert peers.judge_targets(ratio, peer_cases.TARGET_SIZE)["adakd_fused_adakd_vs_adakd_fused.time"] is False
    assert set(peers.judge_targets(ratio, (256, 8192, 768, 1024)).values()) == {None}


def test_ratios_use_neighbouring_runs_when_alternated():
    ok = dict(status="ok", peak_mb=100.0)
    cases = {
        "adakd_fused": {**ok, "time_s": 2.0, "times_s": [2.0, 4.0, 2.0], "alternated_with": ["adakd_fused_adakd"]},
        "adakd_fused_adakd": {**ok, "time_s": 2.2, "times_s": [2.2, 4.4, 2.2], "alternated_with": ["adakd_fused"],
                              "peak_mb": 50.0},
        "trl_naive": {"status": "skipped", "reason": "trl not installed"},
    }
    r = peers.ratios(cases)
    assert r["adakd_fused_adakd_vs_adakd_fused"]["time"] == pytest.approx(1.1)
    assert r["adakd_fused_adakd_vs_adakd_fused"]["memory"] == pytest.approx(0.5)
    assert r["adakd_fused_vs_trl_naive"] == {"status": "skipped", "reason": "trl_naive: trl not installed"}


def test_trl_distillation_loss_of_an_older_trl_is_a_skip(monkeypatch, capsys):
    """trl before 1.12 has no DistillationTrainer loss: the case reports the version it found, not a crash."""
    import types

    fake = types.ModuleType("trl.trainer.distillation_trainer")
    monkeypatch.setitem(__import__("sys").modules, "trl.trainer.distillation_trainer", fake)
    monkeypatch.setattr(peer_cases, "peer_version", lambda peer: "0.19.1")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    if not _installed("trl"):
        pytest.skip(peers.peer_missing("trl"))
    assert peers.serve(peers.parse_args([*TINY, "--worker", "trl_distill"])) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert "import failed" in line["skipped"] and "trl 0.19.1" in line["skipped"] and ">= 1.12" in line["skipped"]


@pytest.mark.parametrize("case", ["trl_naive", "trl_distill", "liger_fused", "torchtune_chunked"])
def test_peer_matches_adakd(case):
    peer = peer_cases.CASES[case].peer
    if not _installed(peer):
        pytest.skip(peers.peer_missing(peer))
    check = peer_cases.convention_check(case, chunk=7)  # float64, masked tokens, beta 0.1
    assert check["ok"], check
    args = peers.parse_args(TINY)
    ours = "adakd_fused" if peer_cases.CASES[case].group == "jsd" else "adakd_chunked"
    got = peers.Runner(args, case).run()["loss"]
    expect = peers.Runner(args, ours).run()["loss"]
    if case == "torchtune_chunked":
        x = peer_cases.make_inputs("fkl", args.n, args.v, args.h_student, args.h_teacher, seed=args.seed)
        got -= peer_cases.teacher_entropy(x["t"], x["labels"])
    assert math.isclose(got, expect, rel_tol=1e-5)
