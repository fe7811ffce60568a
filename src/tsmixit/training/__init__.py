"""Training: the recipe config (`config`), the stage plan (`plan`), the Lightning systems
(`systems`), one module per stage kind (`stages`) and what they share (`fit`, `datamodule`,
`splits`, `run_folder`, `checkpoints`). `tsmixit.recipe` runs them."""
