"""Strict TOML recipes: schema, loading with overrides, validation and writing. Never imports torch."""

from imdm.recipe.errors import RecipeError
from imdm.recipe.loader import load_recipe, recipe_from_dict
from imdm.recipe.schema import Recipe

__all__ = ["Recipe", "RecipeError", "load_recipe", "recipe_from_dict"]
