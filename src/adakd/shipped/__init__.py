"""The shipped models' maintenance, outside the run path: rebuilding the world miniature's models
(world_models, `make world-models`), measuring its regime (world_probe, `make world-probe`) and rebuilding the
synthetic teacher (synthetic_teacher, `make teacher`). A run never imports these."""
