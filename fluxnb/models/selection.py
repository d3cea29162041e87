"""Which model runs: a name from model_config.yaml, or 'auto' (the primary model where it can run).

'auto' falls back to the embedded tiny model on a machine without a CUDA GPU or without the weights
(not cached and no hub access), and says why: the first lines of a run and every image's metadata
carry that reason, so a picture of noise is never mistaken for a broken FLUX.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.hub import hub_reachable, is_cached
from .config import ModelConfig, ModelSpec, load_config

AUTO = "auto"


@dataclass(frozen=True)
class ModelChoice:
    spec: ModelSpec
    requested: str
    reason: str

    def __str__(self) -> str:
        return f"model: {self.spec.name} ({self.spec.id}) - {self.reason}"


def resolve_model(name: str = AUTO, config: ModelConfig | None = None) -> ModelChoice:
    """Turn a `model` parameter into a model entry, with the reason for the choice.

    Args:
        name: a model name from model_config.yaml, or "auto".
        config: the model config (default: the project's).

    Returns:
        ModelChoice: the entry and the reason it was chosen (printed first in every run).

    Raises:
        RequestError: a name that is not defined (the message lists the names that are).
    """
    import torch

    config = config or load_config()
    if name != AUTO:
        return ModelChoice(config.get(name), name, "chosen by name")
    primary = config.get(config.primary_model)
    fallback = config.get(config.fallback_model)
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
