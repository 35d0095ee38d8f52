"""What a failed forward pass says about the device: out of memory (retry later, or smaller), or broken
for good (a CUDA error that poisons the context: every later call fails too), or neither (a bad input).

Without torch: the exceptions are recognised by their class (by name, along the class's bases) and
their text, so that the service's batcher can tell them apart without importing the model's library.

- Out of memory: ``torch.OutOfMemoryError`` (``torch.cuda.OutOfMemoryError`` is the same class), raised
  by the caching allocator, or a RuntimeError whose text says so (cuDNN, cuBLAS workspaces; a CPU
  allocation that fails: "DefaultCPUAllocator: can't allocate memory"). The process stays healthy: its
  memory is freed once the failed pass's tensors are gone.
- A fatal device error: CUDA's sticky errors ("an illegal memory access was encountered", "device-side
  assert triggered", "unspecified launch failure", ...) leave the CUDA context unusable: every later
  kernel launch in the process fails. torch raises them as ``torch.AcceleratorError`` (a RuntimeError)
  or, from cuBLAS and cuDNN, as a RuntimeError whose text starts "CUDA error" / "cuDNN error". Only a
  new process recovers: the service must say it is broken (``/readyz`` and ``/healthz`` 503) so that its
  orchestrator restarts it.
"""

from __future__ import annotations

# Texts of the RuntimeErrors that mean the allocator could not serve a request.
_OOM_TEXTS = ("out of memory", "can't allocate memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")
# Texts of the RuntimeErrors that come from a failed CUDA call (cudaError_t, cuBLAS, cuDNN status).
_DEVICE_TEXTS = ("CUDA error", "cuDNN error", "CUBLAS_STATUS_", "CUDNN_STATUS_", "device-side assert",
                 "illegal memory access", "unspecified launch failure")


def _class_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says the device (or the host) ran out of memory for a forward pass."""
    if "OutOfMemoryError" in _class_names(exc):
        return True
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        isinstance(exc, MemoryError) or any(text in str(exc) for text in _OOM_TEXTS)
    )


def is_fatal_device_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a CUDA error that leaves the device unusable for the rest of the process (an
    illegal memory access, a device-side assert ...): not out-of-memory, which passes."""
    if is_out_of_memory(exc):
        return False
    if "AcceleratorError" in _class_names(exc):
        return True
    return isinstance(exc, RuntimeError) and any(text in str(exc) for text in _DEVICE_TEXTS)
