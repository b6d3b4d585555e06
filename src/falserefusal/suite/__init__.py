"""The product suite, installed with the package: `pytest --pyargs falserefusal` runs it from any folder."""
