"""The run specification (agentserver/run_spec.py): the typed form of a run's stored `kwargs`."""

from __future__ import annotations

import dataclasses

import pytest

from agentserver.run_spec import RunSpec

# A run's kwargs as RunService.create has stored them so far (every key).
STORED = {
    "input": {"x": 1},
    "command": None,
    "config": {"configurable": {"thread_id": "t", "run_id": "r", "graph_id": "g"}, "metadata": {"run_id": "r"}},
    "context": {"c": 1},
    "stream_mode": ["updates", "custom"],
    "interrupt_before": "*",
    "interrupt_after": ["n"],
    "webhook": "http://example.com/hook",
    "feedback_keys": None,
    "temporary": True,
    "subgraphs": True,
    "resumable": False,
    "durability": "exit",
    "on_disconnect": "cancel",
    "checkpoint_id": "c1",
}


def test_round_trip_keeps_the_stored_shape():
    spec = RunSpec.from_json(STORED)
    assert spec.to_json() == STORED
    assert list(spec.to_json()) == list(STORED)  # same keys, same order
    assert spec.stream_mode == ("updates", "custom") and spec.subgraphs and spec.temporary
    assert RunSpec.from_json(spec.to_json()) == spec


def test_tolerant_of_older_and_partial_shapes():
    defaults = RunSpec.from_json({})
    assert defaults == RunSpec() == RunSpec.from_json(None)
    assert defaults.stream_mode == ("values",) and defaults.durability == "async" and defaults.config == {}
    assert not defaults.temporary and not defaults.resumable and defaults.on_disconnect == "continue"
    legacy = RunSpec.from_json({"stream_mode": "values", "stream_subgraphs": True, "durability": None, "extra": 1})
    assert legacy.stream_mode == ("values",) and legacy.subgraphs and legacy.durability == "async"
    assert set(legacy.to_json()) == set(STORED)


def test_frozen():
    spec = RunSpec.from_json(STORED)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.input = None  # type: ignore[misc]
    resumed = dataclasses.replace(spec, input=None, command=None)
    assert resumed.input is None and spec.input == {"x": 1}
