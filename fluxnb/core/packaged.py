"""The data that ships inside the fluxnb package (the wheel), found the same way installed or in a checkout.

A user of `pip install fluxnb` has no repository: the default model_config.yaml, the notebooks and their assets
travel as package data (pyproject.toml `package-data`), and `fluxnb notebooks DIR` copies the notebooks out.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PACKAGE_DIR = Path(str(resources.files("fluxnb")))
CONFIG_NAME = "model_config.yaml"
DEFAULT_CONFIG_PATH = PACKAGE_DIR / CONFIG_NAME  # the models fluxnb ships (README "Models")
NOTEBOOKS_DIR = PACKAGE_DIR / "notebooks"
ASSETS_DIR = NOTEBOOKS_DIR / "assets"
SAMPLE_INIT_IMAGE = ASSETS_DIR / "init_image.png"  # image-to-image's default starting picture


def notebook_names() -> list[str]:
    """The packaged notebooks, by name (`01_text_to_image`, ...)."""
    return sorted(p.stem for p in NOTEBOOKS_DIR.glob("*.ipynb"))
