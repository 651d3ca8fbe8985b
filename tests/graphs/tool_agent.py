"""`tool_agent` and `tool_agent_factory`: `langchain.agents.create_agent` with a tool and a
context schema, driven by a fake chat model (no LLM key), as users write agents.

The fake model first calls `lookup_weather` with the city of the last user message, then
answers with what the tool returned. The tool reads the run's context (`units`) through its
`ToolRuntime`. `tool_agent_factory` builds the same agent per run from a `(config, runtime)`
factory, naming the agent after the assistant's `context.agent_name` when the run executes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from langchain.agents import create_agent
from langchain.tools import ToolRuntime, tool
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import RunnableConfig
from langgraph_sdk.runtime import ServerRuntime


@dataclass
class AgentContext:
    units: str = "celsius"
    agent_name: str = "weather"


@tool
def lookup_weather(city: str, runtime: ToolRuntime[AgentContext]) -> str:
    """The weather in a city."""
    return f"sunny in {city}, 21 degrees {runtime.context.units}"


class FakeToolCallingModel(BaseChatModel):
    """Calls the tool once, then answers with the tool's result."""

    @property
    def _llm_type(self) -> str:
        return "fake-tool-calling"

    def bind_tools(self, tools: Any, **kwargs: Any) -> "FakeToolCallingModel":
        return self

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        last = messages[-1]
        if isinstance(last, ToolMessage):
            reply = AIMessage(content=f"The forecast: {last.content}.")
        else:
            city = next((str(m.content) for m in reversed(messages) if isinstance(m, HumanMessage)), "Paris")
            reply = AIMessage(
                content="",
                tool_calls=[{"name": "lookup_weather", "args": {"city": city}, "id": f"call-{len(messages)}"}],
            )
        return ChatResult(generations=[ChatGeneration(message=reply)])


def _agent(name: str):
    return create_agent(FakeToolCallingModel(), tools=[lookup_weather], context_schema=AgentContext, name=name)


tool_agent = _agent("weather")


async def tool_agent_factory(config: RunnableConfig, runtime: ServerRuntime[AgentContext]):
    ert = runtime.execution_runtime
    name = (ert.context or {}).get("agent_name", "weather") if ert is not None else "weather"
    return _agent(name)
