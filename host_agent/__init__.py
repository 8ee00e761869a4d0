"""The host agent daemon (`rasp-agent`): probe server, pipeline, policies, store."""

__version__ = "0.1.0"
