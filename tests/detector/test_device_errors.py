"""detector/device_errors.py: out of memory, a fatal CUDA error and an ordinary failure told apart, on the
exceptions torch raises (constructed here: no GPU needed)."""

from __future__ import annotations

import pytest
import torch

from detector.device_errors import is_fatal_device_error, is_out_of_memory

FATAL = [
    torch.AcceleratorError("CUDA error: an illegal memory access was encountered"),
    RuntimeError("CUDA error: device-side assert triggered\nCompile with `TORCH_USE_CUDA_DSA` ..."),
    RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm(...)`"),
    RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"),
]
OUT_OF_MEMORY = [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    torch.cuda.OutOfMemoryError("CUDA out of memory."),
    RuntimeError("CUDA error: out of memory"),
    RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9000000000 bytes"),
    MemoryError(),
]
ORDINARY = [
    RuntimeError("Given groups=1, weight of size [64, 3, 7, 7], expected input to have 3 channels"),
    ValueError("image 0: expected an HxWx3 uint8 RGB array"),
]


@pytest.mark.parametrize("exc", FATAL, ids=repr)
def test_sticky_cuda_errors_are_fatal_not_out_of_memory(exc):
    assert is_fatal_device_error(exc) and not is_out_of_memory(exc)


@pytest.mark.parametrize("exc", OUT_OF_MEMORY, ids=repr)
def test_out_of_memory_passes(exc):
    assert is_out_of_memory(exc) and not is_fatal_device_error(exc)


@pytest.mark.parametrize("exc", ORDINARY, ids=repr)
def test_an_ordinary_failure_is_neither(exc):
    assert not is_out_of_memory(exc) and not is_fatal_device_error(exc)
