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


# Run directories are found again by the hash of their config: typing the recipes' parameters (or any other
# refactoring of the schema) must leave these names where they were (computed before the change).
PINNED_RUN_DIRS = {
    "rkl": "rkl-adakd-tiny-803dac64ec",
    "gkd": "gkd-adakd-tiny-9212c58b4e",
    "distillm": "distillm-adakd-tiny-72e668a00e",
    "seqkd": "seqkd-adakd-tiny-a2da812f18",
    "seqkd-ce": "seqkd-ce-adakd-tiny-79bb16b775",
}


@pytest.mark.parametrize("method", sorted(PINNED_RUN_DIRS))
def test_run_directory_names_stay(method, tmp_path):
    from adakd.experiment.tasks import run_dir_for
    cfg = compose_cfg(["experiment=smoke", f"method={method}", f"run.output_root={tmp_path}"])
    assert run_dir_for(cfg).name == PINNED_RUN_DIRS[method]


def test_recipe_params_are_composed_from_the_schema():
    from adakd.schema.recipes import defaults
    for recipe in ("gkd", "distillm", "seqkd"):
        assert OmegaConf.to_container(compose_cfg([f"method={recipe}"]).method.recipe_params) == defaults(recipe)


def test_one_range_refuses_in_the_config_check_and_in_the_constructor():
    """A range is written once (adakd.schema): the config check and the object built from the value refuse the
    same values."""
    from adakd.kd.adaptive import LATFController
    from adakd.training.recipes import GKDSource
    with pytest.raises(ConfigError, match=r"adakd.ema_beta=1.0 is out of range \[0.0, 1.0\)"):
        validate_config(compose_cfg(["experiment=smoke", "adakd.ema_beta=1.0"]))
    with pytest.raises(ValueError, match=r"ema_beta must be in \[0, 1\)"):
        LATFController(10, ema_beta=1.0)
    with pytest.raises(ConfigError, match=r"method.recipe_params.lambda=1.5 is out of range \[0.0, 1.0\]"):
        validate_config(compose_cfg(["experiment=smoke", "method=gkd", "method.recipe_params.lambda=1.5"]))
    with pytest.raises(ValueError, match=r"lambda must be in \[0, 1\]"):
        GKDSource(student=None, tokenizer=None, seed=0, lam=1.5)
