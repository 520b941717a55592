"""Data files shipped inside the sessionkit package (see [tool.setuptools.package-dir] in pyproject.toml)."""
