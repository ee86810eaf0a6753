"""User-facing methods ("recipes"): one module per family, discovered.

A recipe ties an algorithm (methods/), a byte layout (formats/) and a runtime (runtimes/) into a
name the user types, e.g. `bnb-nf4-dq` or `gguf-q4_k_m`. Adding a family is one new module in this
folder that calls `register` (see recipes/base.py for the contract); nothing else lists it.
"""

from quantbench.recipes.base import QuantizeJob, QuantizeOptions, Recipe, TensorPlan, all_recipes, get_recipe, register

__all__ = ["QuantizeJob", "QuantizeOptions", "Recipe", "TensorPlan", "all_recipes", "get_recipe", "register"]
