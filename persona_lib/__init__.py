"""persona-lab: persona fine-tuning, taught and measured."""
__version__ = "0.1.0"
