"""Queue worker: claims runs from storage and drives the executor for each."""

from agentserver.worker.worker import Worker

__all__ = ["Worker"]
