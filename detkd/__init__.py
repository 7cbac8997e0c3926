"""detkd: knowledge distillation for torchvision object detectors."""

__version__ = "0.1.0"

__all__ = ["load_model"]


def __getattr__(name: str):
    # Lazy, so `import detkd` stays light (no torch/torchvision import).
    if name == "load_model":
        from detkd.modeling.checkpoint_io import load_model

        return load_model
    raise AttributeError(f"module 'detkd' has no attribute {name!r}")
