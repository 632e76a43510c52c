"""Merge recipes from other tools: mergekit's YAML (:mod:`mergejax.recipes.mergekit`) parsed into a plain
plan, and run through the engine (:mod:`mergejax.recipes.run`)."""
