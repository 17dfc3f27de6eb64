"""Postillion: a mail transfer agent modelled on OpenSMTPD."""

__version__ = "0.1.0"
