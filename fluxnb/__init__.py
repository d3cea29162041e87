"""fluxnb: FLUX.1-dev on one 22-24 GB GPU, as a tested notebook workflow.

The notebooks call these functions; the tests call the same ones.
"""


from .config import ModelConfig, ModelSpec, load_config
from .diagnosis import Diagnosis, diagnose, explain_errors
from .doctor import DoctorReport, check_environment
from .errors import (
    ConfigError,
    FluxnbError,
    InputError,
    LoadError,
    ModelUnavailableError,
    QuantizationError,
    RequestError,
    RunFolderBusy,
)
from .generation import GeneratedImage, generate
from .loading import LoadedModel, LoadReport, load_model
from .outputs import RunFolder, read_manifest, read_png_metadata
from .packaged import SAMPLE_INIT_IMAGE
from .params import (
    IMAGE_TO_IMAGE,
    TEXT_TO_IMAGE,
    GenerationRequest,
    load_image_file,
    make_request,
)
from .quiet import silence_known_harmless  # importing it filters known-harmless log lines (fluxnb.quiet)
from .sanity import SanityReport, check_image
from .selection import ModelChoice, resolve_model

__version__ = "0.1.0"

__all__ = [
    "Diagnosis",
    "DoctorReport",
    "check_environment",
    "diagnose",
    "explain_errors",
    "ConfigError",
    "FluxnbError",
    "GeneratedImage",
    "GenerationRequest",
    "IMAGE_TO_IMAGE",
    "InputError",
    "LoadError",
    "LoadReport",
    "LoadedModel",
    "ModelChoice",
    "ModelConfig",
    "ModelSpec",
    "ModelUnavailableError",
    "QuantizationError",
    "RequestError",
    "RunFolder",
    "RunFolderBusy",
    "SAMPLE_INIT_IMAGE",
    "TEXT_TO_IMAGE",
    "SanityReport",
    "check_image",
    "generate",
    "load_config",
    "load_image_file",
    "load_model",
    "make_request",
    "read_manifest",
    "read_png_metadata",
    "resolve_model",
    "silence_known_harmless",
]
