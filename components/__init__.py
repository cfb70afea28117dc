"""The public registration API: what a file or package of your own imports to add components to mptc
(docs/components.md is the contract). Torch-free: `mptc check` imports it without torch.

    from mptc.components import MODELS, Param, B

    @MODELS.register("twice", [Param("width", "int", min=1)], shape=lambda args, in_shape: (B, args["width"]))
    def twice(width, in_shape):
        import torch                          # inside the factory: `mptc check` stays torch-free
        return torch.nn.Linear(in_shape[0], width)
"""
from mptc.components.registry import (AUGMENTATIONS, BASELINES, DATASETS, ESTIMATORS, FUNCTIONS, HEADS, MODELS,
                                      OPTIMIZERS, PROTOCOLS, SOLVERS, DeclarationError, Param, Registry)
from mptc.components.shapes import B, GraphFeatures, ShapeProblem, broadcast, features, fmt

__all__ = ["MODELS", "HEADS", "DATASETS", "OPTIMIZERS", "FUNCTIONS", "AUGMENTATIONS", "ESTIMATORS", "SOLVERS",
           "PROTOCOLS", "BASELINES", "Param", "Registry", "DeclarationError", "B", "ShapeProblem", "fmt",
           "features", "broadcast", "GraphFeatures", "load"]


def load(target: str) -> str:
    """Imports a module (`"pkg.components"`) or a .py file (relative to the working directory) of your own
    components, as `--plugin` does; returns where it came from. Raises
    `mptc.components.plugins.PluginProblem` when it is missing or raises."""
    from mptc.components.plugins import load as _load
    return _load(target, how="api")
