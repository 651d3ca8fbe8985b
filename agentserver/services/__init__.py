"""The service layer: the rules of each resource (assistants, threads, runs...), between the HTTP
routes (which parse requests and shape responses) and the storage and broker ports (which know
nothing of HTTP). Services raise the domain errors of `agentserver.errors`.

Built once per process by `agentserver.runtime.Services`.
"""
