"""`python -m adakd [overrides]` (and `torchrun ... -m adakd ...`): the same as `adakd-run`."""
from .experiment.cli import main

main()
