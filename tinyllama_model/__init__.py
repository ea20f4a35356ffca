"""tinyllama_model: the model and everything plain PyTorch / plain Python around it.

This package never imports prefect or mlflow: tasks and flows sit above it and call into it.
"""

from tinyllama_model.model import ModelConfig, TinyLlama

__all__ = ["ModelConfig", "TinyLlama"]
