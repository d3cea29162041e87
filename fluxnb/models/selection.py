"""Which model runs: a name from model_config.yaml, or 'auto' (the primary model where it can run).

'auto' falls back to the embedded tiny model on a machine without a CUDA GPU or without the weights
(not cached and no hub access), and says why: the first lines of a run and every image's metadata
carry that reason, so a picture of noise is never mistaken for a broken FLUX.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import RequestError
from ..core.hub import hub_reachable, is_cached
from .backends import get_backend
from .config import ModelConfig, ModelSpec, load_config
from .tasks import TEXT_TO_IMAGE

AUTO = "auto"


@dataclass(frozen=True)
class ModelChoice:
    spec: ModelSpec
    requested: str
    reason: str

    def __str__(self) -> str:
        return f"model: {self.spec.name} ({self.spec.id}) - {self.reason}"


def resolve_model(name: str = AUTO, config: ModelConfig | None = None, task: str = TEXT_TO_IMAGE) -> ModelChoice:
    """Turn a `model` parameter into a model entry, with the reason for the choice.

    Args:
        name: a model name from model_config.yaml, or "auto".
        config: the model config (default: the project's).
        task: what "auto" chooses for (fluxnb.models.tasks): text-to-image's primary and fallback are the runtime's;
            an editing task's are its first entry in the guide's 8-bit format and its tiny entry.

    Returns:
        ModelChoice: the entry and the reason it was chosen (printed first in every run).

    Raises:
        RequestError: a name that is not defined (the message lists the names that are).
    """
    import torch

    config = config or load_config()
    if name != AUTO:
        return ModelChoice(config.get(name), name, "chosen by name")
    primary, fallback = _auto_pair(config, task)
    if not torch.cuda.is_available():
        return ModelChoice(
            fallback,
            name,
            f"auto: no CUDA GPU here, so the primary model {primary.name} cannot run; using the "
            f"{fallback.name} fallback ({fallback.description})",
        )
    if is_cached(primary.id):
        return ModelChoice(primary, name, f"auto: CUDA GPU found and {primary.id} is cached")
    reachable, why = hub_reachable(primary.id)
    if reachable:
        return ModelChoice(primary, name, f"auto: CUDA GPU found and {primary.id} is reachable on the hub")
    return ModelChoice(
        fallback,
        name,
        f"auto: {primary.id} is not cached and the hub is not reachable ({why}); using the {fallback.name} "
        f"fallback ({fallback.description})",
    )


def _auto_pair(config: ModelConfig, task: str) -> tuple[ModelSpec, ModelSpec]:
    """(primary, fallback) of "auto" for `task`."""
    if task == TEXT_TO_IMAGE:
        return config.get(config.primary_model), config.get(config.fallback_model)
    entries = [spec for spec in config.models.values() if spec.task == task]
    primary = next((s for s in entries if get_backend(s.type).family == "bnb"), None)
    fallback = next((s for s in entries if get_backend(s.type).embedded), None)
    if primary is None or fallback is None:
        raise RequestError("model", f"model 'auto' needs a {task} entry in the guide's 8-bit format and a tiny one in "
                           f"{config.path}; it has {', '.join(s.name for s in entries) or 'none'}.",
                           fix="name the model to use (model=NAME)")
    return primary, fallback
