"""The packages: `benchmark*`, plus `benchmark.shipped_suites` built from the top-level `suites/` folder.

`suites/` stays where users look for (and keep) suites; a wheel carries the same files as package data, so the
shipped suites also work after a non-editable install. Everything else is in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

setup(
    # namespace packages too: the data folders under benchmark/bundled/ are packages to setuptools
    packages=[*find_namespace_packages(include=["benchmark", "benchmark.*"], exclude=["*.__pycache__"]),
              "benchmark.shipped_suites"],
    package_dir={"benchmark.shipped_suites": "suites"},
)
