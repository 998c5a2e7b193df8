"""`jitorch.backends.cudnn`: PyTorch's cuDNN switches, which scripts set (`torch.backends.cudnn.benchmark
= True`, `.deterministic = True`). jitorch calls no cuDNN (its GPU kernels are cuBLAS's and its own
Triton ones): the switches are kept as set and change nothing."""

enabled = True
benchmark = False
deterministic = False
allow_tf32 = True


def is_available() -> bool:
    """False: jitorch does not use cuDNN."""
    return False


def version() -> None:
    """None, as PyTorch answers where cuDNN is not available."""
    return None
