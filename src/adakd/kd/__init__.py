"""The KD objective: base divergences (losses), AdaKD's adaptive parts (adaptive: difficulty, LATF ratio,
temperatures) and the objective that combines them (objective). Pure tensor math on rows of logits: no
models, no data loading, no training loop."""
