"""Running experiments: the CLI, tasks and jobs, the runner, sweeps, tables and plots, config validation."""
