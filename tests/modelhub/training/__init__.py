"""Fine-tuning (modelhub.training): LoRA adapters with TRL, and jobs whose process died."""
