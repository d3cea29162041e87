"""The lessons around the attempts (notebook 03): the AutoImageProcessor trap and the working configuration."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import yaml

from ..core.environment import package_versions
from ..knowledge.base import torch_torchvision_mismatch
from ..knowledge.diagnosis import diagnose
from ..models.backends import get_backend
from ..models.config import load_config
from .context import version
from .record import load_replay


def autoimageprocessor_trap() -> dict[str, Any]:
    """The guide's version note ("diffusers 0.35 + transformers 4.57: AutoImageProcessor import error"), re-diagnosed:
    the knowledge base traces it to a torch/torchvision build mismatch; this machine's pair is checked too."""
    record = load_replay()
    torch_version, vision = version("torch"), package_versions().get("torchvision")
    here = (torch_torchvision_mismatch(torch_version, vision) if vision else None)
    return {"guide_says": record.trap_guide_says,
            "diagnosis_ids": [d.entry.id for d in diagnose(record.trap_error)],
            "this_machine": (f"torch {torch_version} with torchvision {vision}: "
                             + (f"MISMATCH ({here})" if here else "a matched pair")) if vision
            else f"torch {torch_version} without torchvision: the trap cannot spring here"}


def working_configuration() -> dict[str, Any]:
    """The guide's final configuration: its model_config.yaml entry and the loader fluxnb runs for it."""
    spec = load_config().get(load_replay().working_model)
    loader = get_backend(spec.type).load
    entry = {spec.name: {"id": spec.id, "type": spec.type, "requires_auth": spec.requires_auth,
                         "params": dataclasses.asdict(spec.params), "description": spec.description}}
    return {"model": spec.name, "id": spec.id, "type": spec.type, "loader": f"{loader.__module__}.{loader.__name__}",
            "model_config_entry": yaml.safe_dump({"models": entry}, sort_keys=False, default_flow_style=None),
            "loader_source": inspect.getsource(loader)}
