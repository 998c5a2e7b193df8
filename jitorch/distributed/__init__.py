"""`jitorch.distributed`: what scripts import from PyTorch's, answering as a PyTorch built without
distributed support does: `is_available()` is False and no process group can be made.

Training scripts import `init_process_group` and friends at the top and call them only when launched
by torchrun (RANK in the environment); run as one process they never do. A call says that jitorch
does not train across processes yet and what to run instead.
"""

from __future__ import annotations

_WHY = ("jitorch does not train across processes yet: run the script as one process (without torchrun, "
        "and without RANK/WORLD_SIZE in the environment)")


def is_available() -> bool:
    """False: no collectives in this jitorch (as PyTorch built without distributed support)."""
    return False


def is_initialized() -> bool:
    """False: no process group exists."""
    return False


def init_process_group(*args, **kwargs) -> None:
    raise RuntimeError(f"init_process_group: {_WHY}")


def destroy_process_group(*args, **kwargs) -> None:
    raise RuntimeError(f"destroy_process_group: no process group was initialized ({_WHY})")


def get_rank(*args, **kwargs) -> int:
    raise RuntimeError(f"Default process group has not been initialized, please make sure to call "
                       f"init_process_group ({_WHY})")


get_world_size = get_rank
barrier = get_rank
all_reduce = get_rank
broadcast = get_rank

__all__ = ["all_reduce", "barrier", "broadcast", "destroy_process_group", "get_rank", "get_world_size",
           "init_process_group", "is_available", "is_initialized"]
