"""Config -> objects: a job resolved once (`plan`), the run's data, tokenizer, teacher (loaded, shipped, or
fine-tuned and cached), student and the wired trainer; `identity` names every run directory and cache;
`preflight` checks memory first."""
