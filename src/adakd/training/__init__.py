"""Training: the loop (loop, with forward, teachers, schedule, signals, diagnostics, logs), checkpoints,
distributed set-up, the top-k teacher cache store, and the recipes' batch sources (recipes). Everything here
takes built objects (models, data, objective) and knows nothing of the Hydra config layout."""
