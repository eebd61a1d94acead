"""Package discovery only (the metadata is in pyproject.toml): every package under src/, found
automatically, plus the Hydra configs of conf/ installed as adakd.conf (a directory outside src/, mapped
in pyproject's package-dir), so no package can be left out of a wheel."""
from setuptools import find_packages, setup

setup(packages=find_packages("src") + ["adakd.conf"])
