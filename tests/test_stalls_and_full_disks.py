"""No stall, one message (issue 23): an unreachable hub fails in seconds naming the id and HF_HUB_OFFLINE; W&B
online that cannot start falls back to offline once, with one warning; a full disk is one message naming the
directory and the space (the previous checkpoint intact); a damaged cache names its directory. The network is
never touched: the unreachable hub and W&B server are simulated."""
from __future__ import annotations

import errno
import logging
import time
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from adakd.errors import USER_ERROR_EXIT_CODE, DataError, DiskFull
from adakd.models import ModelLoadError, loading


@pytest.fixture
def unreachable_hub(monkeypatch):
    """The hub as it is without a network: the request fails (here at once, as DNS fails here)."""
    import huggingface_hub
    calls = []

    def model_info(self, repo_id, timeout=None, **kw):
        calls.append((repo_id, timeout))
        raise ConnectionError("Name or service not known")
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    loading._hub_unreachable.cache_clear()
    yield calls
    loading._hub_unreachable.cache_clear()


def test_an_unreachable_hub_fails_in_seconds_naming_the_id_and_hf_hub_offline(unreachable_hub):
    t0 = time.time()
    with pytest.raises(ModelLoadError) as err:
        loading.check_local_or_hub("some-org/some-model")
    msg = str(err.value)
    assert "some-org/some-model" in msg and "HF_HUB_OFFLINE=1" in msg and "ConnectionError" in msg
    assert unreachable_hub == [("some-org/some-model", loading.HUB_PROBE_TIMEOUT)]   # one short request
    assert loading.HUB_PROBE_TIMEOUT <= 15 and time.time() - t0 < 5
    with pytest.raises(ModelLoadError):
        loading.check_local_or_hub("some-org/some-model")
    assert len(unreachable_hub) == 1   # asked once per id and process


def test_an_unreachable_hub_is_a_config_refusal_before_any_data(unreachable_hub, tmp_path, capsys):
    from adakd.experiment.cli import run_command
    from .compose import compose_cfg
    cfg = compose_cfg(["experiment=smoke", "logger=none", f"run.output_root={tmp_path}",
                       "model.student.source=pretrained", "model.student.path=some-org/some-model"])
    assert run_command(cfg) == USER_ERROR_EXIT_CODE
    err = capsys.readouterr().err
    assert "model.student.path: the Hugging Face hub did not answer" in err and "HF_HUB_OFFLINE=1" in err
    assert not (tmp_path / "runs").exists()


def test_hf_hub_offline_skips_the_probe(unreachable_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loading.check_local_or_hub("some-org/some-model")   # the loader then reads the local hub cache
    assert unreachable_hub == []


class _FakeWandb:
    """wandb as it behaves without a network: online init times out, offline works."""

    def __init__(self):
        self.inits, self.teardowns = [], 0

    def Settings(self, **kw):
        return SimpleNamespace(**kw)

    def init(self, mode, settings, **kw):
        self.inits.append((mode, getattr(settings, "init_timeout", None)))
        if mode == "online":
            raise TimeoutError("context deadline exceeded")
        return SimpleNamespace(finish=lambda **k: None)

    def teardown(self):
        self.teardowns += 1


def test_wandb_online_without_a_network_falls_back_to_offline_once(monkeypatch, tmp_path, caplog):
    import sys
    from adakd import tracking
    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setattr(tracking, "_online_failed", False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = OmegaConf.create({"name": "wandb", "project": "p", "entity": None, "mode": "online", "tags": [],
                            "init_timeout": 7.0})
    with caplog.at_level(logging.WARNING, logger="adakd.tracking"):
        loggers = [tracking.make_logger(cfg, tmp_path / f"r{i}", run_id=f"r{i}", name=f"r{i}", config={})
                   for i in range(3)]   # a command's baseline rows and main run
    assert all(isinstance(lg, tracking.WandbLogger) for lg in loggers)
    assert fake.inits == [("online", 7.0), ("offline", None), ("offline", None), ("offline", None)]
    assert fake.teardowns == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "logger.init_timeout=7.0s" in warnings[0] and "offline" in warnings[0]


# -------------------------------------------------------------------------------------------- full disk
def _tiny_model():
    from adakd.models.loading import model_from_arch
    return model_from_arch({"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 16}, 64, 0, 0)


def test_a_full_disk_during_a_checkpoint_is_one_message_and_the_previous_checkpoint_stays(tmp_path, monkeypatch):
    from adakd.training import checkpoint
    model = _tiny_model()
    first = checkpoint.save(tmp_path / "ckpt", 1, model, {"step": 1})
    size = sum(f.stat().st_size for f in first.iterdir())

    def no_space(*a, **k):   # what torch's zip writer says when the disk fills
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")
    monkeypatch.setattr(checkpoint.torch, "save", no_space)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: SimpleNamespace(free=1024, total=0, used=0))
    with pytest.raises(DiskFull) as err:
        checkpoint.save(tmp_path / "ckpt", 2, model, {"step": 2})
    msg = str(err.value)
    assert f"in {tmp_path / 'ckpt'}: 0.0 MiB free, about {size / 2 ** 20:,.1f} MiB needed" in msg
    assert f"the previous checkpoint ({first.name}) is intact" in msg
    assert checkpoint.list_checkpoints(tmp_path / "ckpt") == [first]
    assert checkpoint.load_latest(tmp_path / "ckpt", _tiny_model())[0] == 1


def test_another_checkpoint_failure_keeps_its_own_message(tmp_path, monkeypatch):
    from adakd.training import checkpoint

    def broken(*a, **k):
        raise RuntimeError("something else")
    monkeypatch.setattr(checkpoint.torch, "save", broken)
    with pytest.raises(RuntimeError, match="something else"):   # space is there: not called a full disk
        checkpoint.save(tmp_path / "ckpt", 1, _tiny_model(), {})


def test_a_full_disk_anywhere_else_exits_2_naming_the_directory(tmp_path, monkeypatch, capsys):
    from adakd.experiment import cli

    def full(cfg):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "runs" / "x" / "predictions.jsonl"))
    monkeypatch.setattr(cli.runner, "run", full)
    monkeypatch.setattr(cli.sweep, "job_config", lambda cfg: cfg)
    assert cli.run_command(OmegaConf.create({})) == USER_ERROR_EXIT_CODE
    err = capsys.readouterr().err
    assert err.startswith("adakd-run: error: no space left on the device while writing ")
    assert f"(in {tmp_path}: " in err and "MiB free" in err and "Traceback" not in err


# -------------------------------------------------------------------------------------------- caches
def test_a_damaged_topk_cache_names_its_directory(tmp_path):
    from adakd.training.topk_cache import TeacherCache
    d = tmp_path / "teacher_topk" / "abc"
    d.mkdir(parents=True)
    (d / "meta.json").write_text('{"k": 4, "voc')
    with pytest.raises(DataError, match=f"the teacher cache {d} is damaged .*delete that directory"):
        TeacherCache(d)


def test_a_corrupt_model_record_names_its_file(tmp_path):
    """The fine-tuned teacher cache's adakd_model.json, damaged: its file named, not a JSON traceback."""
    from adakd.models import verify_checksum
    (tmp_path / "model.safetensors").write_bytes(b"x")
    (tmp_path / "adakd_model.json").write_text('{"sha256": "ab')
    with pytest.raises(ModelLoadError, match=f"{tmp_path / 'adakd_model.json'} is unreadable or corrupt"):
        verify_checksum(tmp_path)
