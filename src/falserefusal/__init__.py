"""falserefusal: a pytest-native release gate for persona-induced false refusals of language models."""

__version__ = "0.1.0"
