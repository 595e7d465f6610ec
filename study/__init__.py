"""study: a statistical study harness for knowledge distillation and Born-Again Networks."""

__version__ = "0.1.0"
