"""Which packages the distribution holds (the rest of the metadata is in pyproject.toml): mrq and
its subpackages, and the dashboard's folder installed under the name `mrq_dashboard`. The data
folders (Lua scripts, templates, static files) are listed as the namespace packages Python sees
them as, so that setuptools ships them without a warning."""

from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages(include=["mrq", "mrq.*"], exclude=["*.__pycache__"]),
              "mrq_dashboard", "mrq_dashboard.static", "mrq_dashboard.templates"],
    package_dir={"mrq_dashboard": "dashboard"},
)
