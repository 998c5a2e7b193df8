"""`jitorch.backends.mps`: Apple's GPUs, which jitorch does not run on. Scripts ask before choosing a
device (`torch.backends.mps.is_available()`): the answer is no, as PyTorch's on a machine without one."""


def is_available() -> bool:
    """False: jitorch has no Metal backend."""
    return False


def is_built() -> bool:
    """False: jitorch has no Metal backend."""
    return False
