"""`adakd-run`: compose the Hydra config and hand it to runner.run. Nothing else happens here."""
from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

from .schema import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="pkg://adakd.conf", config_name="config")
def _main(cfg: DictConfig) -> None:
    from . import runner
    from .train import PREEMPTED_EXIT_CODE, Preempted

    try:
        runner.run(cfg)
    except Preempted as e:
        logging.getLogger("adakd").warning("%s", e)
        sys.exit(PREEMPTED_EXIT_CODE)


def main() -> None:
    # Offline-first: never wait on the hub or a W&B login unless the user asked for it.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_SILENT", "true")
    _main()


if __name__ == "__main__":
    main()
