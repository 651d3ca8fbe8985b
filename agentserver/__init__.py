"""Agent Server: a self-hostable server for LangGraph agents."""

__version__ = "0.1.0"
