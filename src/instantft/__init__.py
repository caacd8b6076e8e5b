"""instantft: ultra-fast on-device fine-tuning of CNNs (Skip2-LoRA / InstantFT)."""

__version__ = "0.1.0"
