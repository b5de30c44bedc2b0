"""imsvc: instant messaging with an AI assistant in the conversation."""

__version__ = "0.1.0"
