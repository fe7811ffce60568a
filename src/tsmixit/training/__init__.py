"""Training: the recipe config (`config`), the Lightning systems (`systems`) and the
resumable TS-MixIT recipe (`recipe.run_recipe`)."""
