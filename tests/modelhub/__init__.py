"""modelhub: generation, serving many models and adapters, remote models, its admin and commands."""
