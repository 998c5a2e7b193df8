"""`jitorch.onnx`: scripts import it for an optional export step (`--onnx-export`). jitorch writes no
ONNX files: `export` raises saying so and what to use."""

from __future__ import annotations


def export(*args, **kwargs) -> None:
    raise NotImplementedError("jitorch cannot export ONNX. Save the weights with jitorch.save(model.state_dict(), "
                              "path), or export the model with PyTorch from those weights.")


def is_in_onnx_export() -> bool:
    """False: jitorch never exports ONNX."""
    return False


__all__ = ["export", "is_in_onnx_export"]
