"""User-facing methods ("recipes"): one registered module per family.

A recipe ties an algorithm (methods/), a byte layout (formats/) and a runtime (runtimes/) into a
name the user types, e.g. `bnb-nf4-dq` or `gguf-q4_k_m`. Adding a family is one new file here plus
one line in FAMILY_MODULES.
"""

from quantbench.recipes.base import Recipe, all_recipes, get_recipe, register

# Imported lazily by all_recipes()/get_recipe() so that `import quantbench` stays cheap.
FAMILY_MODULES = (
    "quantbench.recipes.floats",
    "quantbench.recipes.bnb",
    "quantbench.recipes.gguf",
    "quantbench.recipes.gptq",
)

__all__ = ["Recipe", "all_recipes", "get_recipe", "register", "FAMILY_MODULES"]
