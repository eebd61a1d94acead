"""What Hydra composes from, besides conf/: the schema (`adakd_schema`, listed first in conf/config.yaml) and
the parameters of each divergence and recipe as config nodes, so that their defaults are defined once, in the
modules that use them, and appear in the composed config:

    conf/method/jsd.yaml      defaults: [params: jsd]            -> method.params = {beta: 0.1}
    conf/method/gkd.yaml      defaults: [recipe_params: gkd]     -> method.recipe_params = {lambda: 0.5, ...}

A parameter is then set like any other key (`method.params.beta=0.5`, `method.recipe_params.lambda=0.3`), and
a misspelt one fails at composition.
"""
from __future__ import annotations

from hydra.core.config_store import ConfigStore

from ..kd.losses import DIVERGENCES
from ..schema import RunConfig
from ..schema.recipes import RECIPE_PARAMS, defaults


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="adakd_schema", node=RunConfig)
    for name, cls in DIVERGENCES.items():
        cs.store(group="method/params", name=name, node=dict(cls.defaults))
    for name in RECIPE_PARAMS:
        cs.store(group="method/recipe_params", name=name, node=defaults(name))
