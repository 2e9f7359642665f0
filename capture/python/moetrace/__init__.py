"""moetrace — capture Mixture-of-Experts router logits from PyTorch models into moetrace traces, and apply
moetrace steering files inside PyTorch.

  Capture        forward hooks on the routers of a Hugging Face MoE model -> `moetrace-capture ingest`
  SteeringHook   applies a steering file (steer.h5 / steer.json) to the router logits, as the native engine does
  frames         the ingest stream encoder/decoder (traces/INGEST.md)
  registry       where each architecture's router is and what its logits mean; register() adds more

numpy is required; torch only for Capture and SteeringHook; h5py only to read steer.h5 (the JSON twin needs none).
"""
__version__ = "0.1.0"

from . import frames, registry  # noqa: E402,F401
from .producer import Capture  # noqa: E402,F401
from .sinks import FileSink, IngestError, ProcessSink, SocketSink  # noqa: E402,F401
from .steering import SteeringFile, SteeringHook  # noqa: E402,F401
