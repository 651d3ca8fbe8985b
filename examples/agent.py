"""A small agent that runs without any LLM key: the example to read first.

It shows the three things clients usually want from a LangGraph server:

1. tokens streamed from a chat model (`stream_mode="messages"`): a fake chat model stands in for
   a real one, so nothing needs an API key;
2. custom progress events (`stream_mode="custom"`) written with `get_stream_writer()`;
3. a human in the loop: `interrupt()` pauses the run with a question, and the next run resumes it
   with `Command(resume=...)`.

Flow: START -> respond -> ask_name -> thank -> END
"""

from __future__ import annotations

from typing import Annotated

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import interrupt
from typing_extensions import TypedDict


class State(TypedDict, total=False):
    # The conversation; `add_messages` appends new messages (and updates ones with the same id).
    messages: Annotated[list[AnyMessage], add_messages]
    # The human's answer to our question, filled in after the interrupt.
    name: str


def fake_model(text: str) -> GenericFakeChatModel:
    """A chat model that "generates" `text`, streamed word by word like a real model would."""
    return GenericFakeChatModel(messages=iter([AIMessage(content=text)]))


def last_user_text(state: State) -> str:
    for message in reversed(state.get("messages", [])):
        if isinstance(message, HumanMessage):
            return str(message.content)
    return ""


async def respond(state: State) -> dict:
    """Answer the user's message. Calling the model inside a node is enough for its tokens to
    reach clients streaming with `stream_mode="messages"`."""
    writer = get_stream_writer()
    writer({"status": "thinking"})  # shows up in `stream_mode="custom"`
    said = last_user_text(state) or "nothing"
    reply = await fake_model(f"You said: {said}. Before I go on, I need to ask you something.").ainvoke(
        state.get("messages", [])
    )
    writer({"status": "answered"})
    return {"messages": [reply]}


def ask_name(state: State) -> dict:
    """Pause the run until a human answers. The run ends `interrupted`; the client resumes it with
    `Command(resume="Ada")` and this node runs again, this time getting the answer back."""
    answer = interrupt({"question": "What is your name?"})
    return {"name": str(answer)}


async def thank(state: State) -> dict:
    """Use the human's answer."""
    get_stream_writer()({"status": "finishing"})
    reply = await fake_model(f"Nice to meet you, {state['name']}! That is all this demo does.").ainvoke(
        state.get("messages", [])
    )
    return {"messages": [reply]}


builder = StateGraph(State)
builder.add_node("respond", respond)
builder.add_node("ask_name", ask_name)
builder.add_node("thank", thank)
builder.add_edge(START, "respond")
builder.add_edge("respond", "ask_name")
builder.add_edge("ask_name", "thank")
builder.add_edge("thank", END)

# No checkpointer here: the server attaches its own, so threads persist across restarts.
graph = builder.compile(name="agent")
