"""Line processors, registered by their config ``type`` name."""

from mpobs.pipeline.processors import python, select, tags, text  # noqa: F401  (registers the types)
from mpobs.pipeline.processors.base import REGISTRY, ErrorList, Processor, Spec, register

__all__ = ["REGISTRY", "ErrorList", "Processor", "Spec", "register"]
