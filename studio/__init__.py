"""The Studio core: config, composition root, services, queue, API and CLI."""
__version__ = "0.1.0"
