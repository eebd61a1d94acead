"""Every config group option composes into the schema, and bad overrides fail with useful messages."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError

from adakd.assemble.identity import asset_dir as model_dir
from adakd.experiment.config_check import ConfigError, validate_config

from .compose import compose_cfg

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ["model", "dataset", "method", "adakd", "train", "eval", "logger"]


def _options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes(group, option):
    cfg = compose_cfg([f"{group}={option}"])
    OmegaConf.to_container(cfg, resolve=True)   # every interpolation resolves
    if group == "method" and option in ("gkd", "distillm", "seqkd"):
        return   # recipe presets are validated by their own tests
    if group == "model" and option == "smollm2-offline" and not Path(cfg.model.teacher.path).exists():
        return   # its teacher is made by `make models` (tests/test_models.py)
    if cfg.model.name == "world" and not model_dir(cfg.model.student.path).exists():
        return   # the world miniature's base models are made by `make world-models`
    validate_config(cfg)


def test_default_is_rkl_with_adakd_on():
    cfg = compose_cfg()
    assert cfg.method.divergence == "rkl"
    assert cfg.adakd.latf and cfg.adakd.idts
    assert list(cfg.run.baselines) == ["teacher", "student_init", "sft"]


def test_override_of_adakd_flags():
    cfg = compose_cfg(["experiment=smoke", "method=fkl", "adakd.idts=true", "adakd=none"])
    assert cfg.method.divergence == "fkl"
    assert cfg.adakd.idts is True and cfg.adakd.latf is False


def test_typo_in_key_is_refused_with_its_name():
    with pytest.raises((ConfigCompositionException, ConfigKeyError)) as e:
        compose_cfg(["adakd.idst=true"])
    assert "idst" in str(e.value) + str(e.value.__cause__)


def test_unknown_group_option_lists_valid_choices():
    with pytest.raises(Exception) as e:
        compose_cfg(["method=fkll"])
    msg = str(e.value)
    assert "fkll" in msg and "rkl" in msg   # hydra lists the available options


def test_wrong_type_is_refused():
    with pytest.raises(Exception) as e:
        compose_cfg(["train.lr=fast"])
    assert "lr" in str(e.value) + str(e.value.__cause__)


@pytest.mark.parametrize("override,needle", [
    ("adakd.ratio_start=1.5", "adakd.ratio_start"),
    ("adakd.c=-1", "adakd.c"),
    ("train.global_batch=30", "not divisible"),
    ("adakd.metric=hellinga", "adakd.metric"),
    ("method.divergence=kl", "method.divergence"),
    ("dataset.overlong=cut", "dataset.overlong"),
    ("eval.top_p=0", "eval.top_p"),
])
def test_out_of_range_settings_fail_before_any_work(override, needle):
    cfg = compose_cfg([override])
    with pytest.raises(ConfigError) as e:
        validate_config(cfg)
    assert needle in str(e.value)
