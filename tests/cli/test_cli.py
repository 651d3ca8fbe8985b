"""The `agentserver` command line: help texts and start-up failures that name their cause."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.harness import free_port


def _run(*args: str, cwd=None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agentserver", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


@pytest.mark.parametrize("command", [[], ["dev"], ["serve"], ["worker"], ["migrate"]])
def test_help(command):
    r = _run(*command, "--help")
    assert r.returncode == 0
    assert "usage: agentserver" in r.stdout
    if command == ["dev"]:
        for flag in ("--host", "--port", "--config", "--data-dir"):
            assert flag in r.stdout


def test_no_command_prints_help():
    r = _run()
    assert r.returncode == 2 and "dev" in r.stdout


def test_broken_graph_stops_start_up_naming_graph_file_and_error(tmp_path):
    (tmp_path / "broken.py").write_text("import does_not_exist_anywhere\n")
    (tmp_path / "langgraph.json").write_text(json.dumps({"graphs": {"mine": "./broken.py:graph"}}))
    r = _run("dev", "--port", str(free_port()), "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert r.returncode != 0
    assert "mine" in r.stderr and "broken.py" in r.stderr and "does_not_exist_anywhere" in r.stderr


def test_missing_config_is_a_clear_error(tmp_path):
    r = _run("dev", "--config", str(tmp_path / "nope.json"), cwd=tmp_path)
    assert r.returncode != 0 and "nope.json" in r.stderr


def test_invalid_setting_is_named(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "agentserver", "dev", "--config", "tests/graphs/langgraph.json"],
        capture_output=True, text=True, timeout=60,
        env={**__import__("os").environ, "N_JOBS_PER_WORKER": "many"},
    )
    assert r.returncode != 0 and "N_JOBS_PER_WORKER" in r.stderr
