"""archlab: the model structures behind today's large models, implemented, trained and compared."""
__version__ = "0.1.0"
