"""langgraph.json parsing: both graph spec forms, env file and mapping, unknown keys, errors."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import pytest

from agentserver.config import ConfigError, apply_env, load_config

GRAPHS_DIR = Path(__file__).parents[1] / "graphs"


def write(tmp_path: Path, data, name: str = "langgraph.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_loads_the_test_project():
    cfg = load_config(GRAPHS_DIR / "langgraph.json")
    assert cfg.path == (GRAPHS_DIR / "langgraph.json").resolve()
    assert cfg.base_dir == GRAPHS_DIR.resolve()
    assert list(cfg.graphs)[:3] == ["agent", "echo", "steps"]
    assert cfg.graphs["echo"] == "./echo.py:graph"
    assert cfg.graphs["agent"] == "../../examples/agent.py:graph"
    assert cfg.descriptions["factory"].startswith("Built per run")
    assert "echo" not in cfg.descriptions
    assert cfg.dependencies == [str(GRAPHS_DIR.resolve())]
    assert cfg.env == {"AGENTSERVER_TEST_GRAPHS_LOADED": "1"}
    assert cfg.unknown == {}  # "$schema" is a known key


def test_folder_path_finds_langgraph_json():
    assert load_config(GRAPHS_DIR).path == (GRAPHS_DIR / "langgraph.json").resolve()


def test_both_spec_forms_and_sections(tmp_path):
    (tmp_path / "src").mkdir()
    path = write(
        tmp_path,
        {
            "dependencies": [".", "./src", "langchain-openai", "git+https://example.com/x.git"],
            "graphs": {
                "a": "./a.py:graph",
                "b": {"path": "pkg.mod:make", "description": "Graph B"},
                "c": {"path": "./c.py:graph"},
            },
            "auth": {"path": "./auth.py:auth"},
            "store": {"index": {"dims": 3, "embed": "fake"}},
            "checkpointer": {"ttl": {"strategy": "delete", "default_ttl": 5}},
            "http": {"disable_meta": True},
            "webhooks": {"env_prefix": "X_"},
            "python_version": "3.12",
            "dockerfile_lines": ["RUN true"],
            "image_distro": "wolfi",
            "pip_config_file": "pip.conf",
            "node_version": "20",
        },
    )
    cfg = load_config(str(path))
    assert cfg.graphs == {"a": "./a.py:graph", "b": "pkg.mod:make", "c": "./c.py:graph"}
    assert cfg.descriptions == {"b": "Graph B"}
    assert cfg.dependencies == [str(tmp_path.resolve()), str((tmp_path / "src").resolve())]
    assert cfg.packages == ["langchain-openai", "git+https://example.com/x.git"]
    assert cfg.auth == {"path": "./auth.py:auth"}
    assert cfg.store == {"index": {"dims": 3, "embed": "fake"}}
    assert cfg.checkpointer["ttl"]["strategy"] == "delete"
    assert cfg.http == {"disable_meta": True}
    assert cfg.webhooks == {"env_prefix": "X_"}
    assert cfg.unknown == {}
    assert cfg.raw["python_version"] == "3.12"
    assert cfg.resolve("./x/../y.txt") == (tmp_path / "y.txt").resolve()


def test_env_file_relative_to_config(tmp_path):
    sub = tmp_path / "proj"
    sub.mkdir()
    (sub / "vars.env").write_text("A=1\nexport B='two words'\n# comment\nC=\"q\"\nEMPTY=\nBARE\n")
    cfg = load_config(write(sub, {"graphs": {"g": "./g.py:g"}, "env": "./vars.env"}))
    assert cfg.env == {"A": "1", "B": "two words", "C": "q", "EMPTY": ""}


def test_env_mapping_and_scalars(tmp_path):
    cfg = load_config(write(tmp_path, {"graphs": {"g": "./g.py:g"}, "env": {"A": "x", "N": 3, "F": True}}))
    assert cfg.env == {"A": "x", "N": "3", "F": "true"}


def test_missing_env_file_warns(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="agentserver.config"):
        cfg = load_config(write(tmp_path, {"graphs": {"g": "./g.py:g"}, "env": ".env"}))
    assert cfg.env == {}
    assert any(".env" in r.getMessage() and "does not exist" in r.getMessage() for r in caplog.records)


def test_unknown_keys_kept_and_warned(tmp_path, caplog):
    path = write(tmp_path, {"graphs": {"g": "./g.py:g"}, "grpahs_typo": 1, "extra": {"x": 1}})
    with caplog.at_level(logging.WARNING, logger="agentserver.config"):
        cfg = load_config(path)
    assert cfg.unknown == {"grpahs_typo": 1, "extra": {"x": 1}}
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 1
    assert "extra" in messages[0] and "grpahs_typo" in messages[0] and str(path.resolve()) in messages[0]


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{not json", "invalid JSON at line 1"),
        ("[]", "top level must be a JSON object"),
        ({"dependencies": ["."]}, "missing 'graphs'"),
        ({"graphs": ["./a.py:g"]}, "'graphs' must be an object"),
        ({"graphs": {}}, "'graphs' is empty"),
        ({"graphs": {"g": 3}}, "graph 'g': expected './file.py:attribute'"),
        ({"graphs": {"g": "./a.py"}}, "graph 'g': spec './a.py' must look like"),
        ({"graphs": {"g": "./a.py:"}}, "graph 'g': spec"),
        ({"graphs": {"g": {"description": "x"}}}, "graph 'g': 'path' must be a non-empty string"),
        ({"graphs": {"g": {"path": "./a.py:g", "description": 5}}}, "graph 'g': 'description' must be a string"),
        ({"graphs": {"g": "./a.py:g"}, "dependencies": "."}, "'dependencies' must be an array"),
        ({"graphs": {"g": "./a.py:g"}, "dependencies": [1]}, "'dependencies' entries must be"),
        ({"graphs": {"g": "./a.py:g"}, "dependencies": ["./missing"]}, "dependency './missing' is not a folder"),
        ({"graphs": {"g": "./a.py:g"}, "env": 5}, "'env' must be a path to a .env file or an object"),
        ({"graphs": {"g": "./a.py:g"}, "env": {"A": [1]}}, "'env' value for 'A' must be a string"),
        ({"graphs": {"g": "./a.py:g"}, "auth": "./auth.py:auth"}, "'auth' must be an object"),
        ({"graphs": {"g": "./a.py:g"}, "store": []}, "'store' must be an object"),
        ({"graphs": {"g": "./a.py:g"}, "http": 1}, "'http' must be an object"),
    ],
)
def test_errors_name_file_and_problem(tmp_path, content, problem):
    path = write(tmp_path, content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path.resolve()}: ")
    assert problem in message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.json")


def test_apply_env_does_not_override_and_sets_sys_path(tmp_path, monkeypatch):
    dep = tmp_path / "lib"
    (dep / "src").mkdir(parents=True)
    (dep / "pyproject.toml").write_text("[project]\nname='x'\n")
    path = write(
        tmp_path,
        {
            "graphs": {"g": "./g.py:g"},
            "dependencies": ["./lib"],
            "env": {"AGENTSERVER_T_NEW": "new", "AGENTSERVER_T_SET": "from-config"},
        },
    )
    monkeypatch.setenv("AGENTSERVER_T_SET", "from-process")
    monkeypatch.delenv("AGENTSERVER_T_NEW", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    cfg = load_config(path)
    apply_env(cfg)
    try:
        assert os.environ["AGENTSERVER_T_NEW"] == "new"
        assert os.environ["AGENTSERVER_T_SET"] == "from-process"
        lib, src, base = str(dep.resolve()), str((dep / "src").resolve()), str(tmp_path.resolve())
        assert sys.path[:3] == [lib, src, base]
        apply_env(cfg)  # idempotent: nothing added twice
        assert sys.path.count(lib) == sys.path.count(src) == sys.path.count(base) == 1
    finally:
        os.environ.pop("AGENTSERVER_T_NEW", None)


# ---- what the server does not implement: refused or named at start-up --------------------------


def test_auth_is_refused_naming_the_key(tmp_path):
    from agentserver.config import check_supported

    path = write(tmp_path, {"graphs": {"g": "./g.py:g"}, "auth": {"path": "./auth.py:auth"}})
    cfg = load_config(path)
    with pytest.raises(ConfigError, match="'auth' is set") as info:
        check_supported(cfg)
    assert "\n" not in str(info.value) and str(path.resolve()) in str(info.value)
    check_supported(load_config(write(tmp_path, {"graphs": {"g": "./g.py:g"}, "auth": None})))


def test_ignored_keys_names_every_unimplemented_key(tmp_path):
    from agentserver.config import BUILD_KEYS, KNOWN_KEYS, NOT_IMPLEMENTED_KEYS, ignored_keys

    # every known key is either served, refused, build-only or named as not implemented
    served = {"$schema", "graphs", "dependencies", "env", "auth"}
    assert KNOWN_KEYS == served | BUILD_KEYS | set(NOT_IMPLEMENTED_KEYS)
    data = {"graphs": {"g": "./g.py:g"}, "dependencies": [".", "langchain-openai"], "python_version": "3.12"}
    data.update({key: {"x": 1} for key in NOT_IMPLEMENTED_KEYS})
    warnings, infos = ignored_keys(load_config(write(tmp_path, data)))
    assert len(warnings) == 1
    for key in NOT_IMPLEMENTED_KEYS:
        assert f"{key} (" in warnings[0]
    assert any("python_version" in line for line in infos)
    assert any("langchain-openai" in line for line in infos)
    assert ignored_keys(load_config(write(tmp_path, {"graphs": {"g": "./g.py:g"}}))) == ([], [])


def test_ignored_env_names_set_variables_only():
    from agentserver.settings import NOT_IMPLEMENTED_ENV, SCALED_ONLY_ENV, ignored_env

    assert ignored_env({}, "embedded") == [] and ignored_env({}, "scaled") == []
    env = {name: "x" for name in NOT_IMPLEMENTED_ENV} | {"POSTGRES_URI_CUSTOM": "postgresql://h/db", "N_JOBS_PER_WORKER": "3"}
    scaled = ignored_env(env, "scaled")
    assert len(scaled) == 1 and all(name in scaled[0] for name in NOT_IMPLEMENTED_ENV)
    assert "POSTGRES_URI_CUSTOM" not in scaled[0]
    embedded = ignored_env(env, "embedded")
    assert len(embedded) == 2 and "POSTGRES_URI_CUSTOM" in embedded[1] and "N_JOBS" not in embedded[1]
    assert all(name in ignored_env({name: "1"}, "embedded")[0] for name in SCALED_ONLY_ENV)


REFERENCE_ENV = (
    "BG_JOB_ISOLATED_LOOPS BG_JOB_MAX_RETRIES BG_JOB_SHUTDOWN_GRACE_PERIOD_SECS BG_JOB_TIMEOUT_SECS "
    "CORS_ALLOW_ORIGINS DD_API_KEY LANGGRAPH_POSTGRES_POOL_MAX_SIZE LS_CHECKPOINT_DELETE "
    "LS_DEFAULT_CHECKPOINTER_BACKEND LANGSMITH_API_KEY LANGSMITH_ENDPOINT LANGSMITH_TRACING LOG_COLOR "
    "LOG_LEVEL LOG_JSON MOUNT_PREFIX N_JOBS_PER_WORKER LS_APM_OTEL_ENABLED LS_MONGODB_URI "
    "POSTGRES_URI_CUSTOM REDIS_CLUSTER REDIS_KEY_PREFIX REDIS_URI_CUSTOM REDIS_MAX_CONNECTIONS "
    "RESUMABLE_STREAM_TTL_SECONDS"
).split()


def test_every_variable_of_the_reference_is_implemented_or_named():
    """The official server's env-var reference (shared seeds): each variable is read by Settings,
    is LangSmith's own, or is named at start-up as not implemented."""
    import re

    from agentserver import settings as settings_mod

    names = set(REFERENCE_ENV)
    for reference in (Path(__file__).resolve().parents[3] / "shared", Path("/work/shared")):
        reference = reference / "seeds" / "agent-server-env-vars.md"
        if reference.exists():  # the list below is that file's headings
            assert set(re.findall(r"^## `([A-Z0-9_]+)`", reference.read_text(), re.M)) == names
    source = Path(settings_mod.__file__).read_text()
    langsmith = {"LANGSMITH_API_KEY", "LANGSMITH_ENDPOINT", "LANGSMITH_TRACING"}
    for name in names - langsmith:
        assert name in settings_mod.NOT_IMPLEMENTED_ENV or f'"{name}"' in source.split("NOT_IMPLEMENTED_ENV")[0], name


@pytest.mark.parametrize("value, expected", [("debug", "DEBUG"), ("WARN", "WARNING"), ("", "INFO"), ("Error", "ERROR")])
def test_log_level(value, expected):
    from agentserver.settings import Settings

    assert Settings.from_env({"LOG_LEVEL": value}).log_level == expected


def test_invalid_log_level_is_named():
    from agentserver.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="LOG_LEVEL.*'LOUD'"):
        Settings.from_env({"LOG_LEVEL": "LOUD"})


def test_langsmith_tracing_defaults_to_true_with_an_api_key():
    from agentserver.settings import default_langsmith_tracing

    env = {"LANGSMITH_API_KEY": "k"}
    assert default_langsmith_tracing(env) and env["LANGSMITH_TRACING"] == "true"
    env = {"LANGSMITH_API_KEY": "k", "LANGSMITH_TRACING": "false"}
    assert not default_langsmith_tracing(env) and env["LANGSMITH_TRACING"] == "false"
    env = {}
    assert not default_langsmith_tracing(env) and env == {}


@pytest.mark.parametrize(
    "uri, shown",
    [
        ("postgresql://bob:s3cret@db.example:5432/app?sslmode=require&password=x", "postgresql://bob@db.example:5432/app"),
        ("redis://:s3cret@127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("postgresql://h1:5432,h2:5433/app", "postgresql://h1:5432,h2:5433/app"),
        ("rediss://user@cache", "rediss://user@cache"),
        ("not a uri", "<unparsable URI>"),
    ],
)
def test_redact_uri(uri, shown):
    from agentserver.runtime import redact_uri

    assert redact_uri(uri) == shown
