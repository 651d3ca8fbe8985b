"""Read a project's `langgraph.json` as users write it for the official tooling.

`load_config(path)` parses and validates the file into a `ProjectConfig`; `apply_env(cfg)` makes the
project importable (local dependencies and the config's folder on `sys.path`) and sets its
environment variables without overriding variables already set in the process.

Keys that only matter to image builds (`dockerfile_lines`, `python_version`, ...) are accepted and
ignored. Keys nobody knows are kept in `ProjectConfig.unknown` and logged as a warning, so a typo
does not go unnoticed but does not stop the server either. Keys of the official format that this
server does not implement yet are named by `ignored_keys` (a start-up warning); `auth` stops
start-up (`check_supported`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

logger = logging.getLogger(__name__)

CONFIG_FILENAME = "langgraph.json"

# Every top-level key of the official langgraph.json format. Only some of them mean something to
# this server (graphs, dependencies, env, auth, store, checkpointer, http, webhooks, ...); the
# others describe how to build a container image and are ignored here.
KNOWN_KEYS = frozenset(
    {
        "$schema",
        "_INTERNAL_docker_tag",
        "api_version",
        "auth",
        "base_image",
        "checkpointer",
        "dependencies",
        "dockerfile_lines",
        "encryption",
        "env",
        "graphs",
        "http",
        "image_distro",
        "keep_pkg_tools",
        "middleware_order",
        "node_version",
        "pip_config_file",
        "pip_installer",
        "python_version",
        "store",
        "ui",
        "ui_config",
        "webhooks",
    }
)


# Keys the official server acts on at run time that this server does not implement yet: a start-up
# warning names each one present. Remove a key from here when it gets implemented. `auth` is not
# here: a project that asks for authentication does not start (see `check_supported`).
NOT_IMPLEMENTED_KEYS = {
    "checkpointer": "checkpointer TTL and backends",
    "encryption": "custom encryption",
    "http": "custom routes, middleware, CORS and headers",
    "middleware_order": "custom middleware",
    "store": "store index (semantic search) and TTL",
    "ui": "generative UI components",
    "ui_config": "generative UI components",
    "webhooks": "webhook URL policy and headers",
}

# Keys that only describe how to build a container image: they mean nothing to a running server.
BUILD_KEYS = frozenset(
    {
        "_INTERNAL_docker_tag",
        "api_version",
        "base_image",
        "dockerfile_lines",
        "image_distro",
        "keep_pkg_tools",
        "node_version",
        "pip_config_file",
        "pip_installer",
        "python_version",
    }
)


class ConfigError(ValueError):
    """The project configuration cannot be used. The message names the file and the problem."""


@dataclass
class ProjectConfig:
    path: Path
    """The langgraph.json file (absolute)."""
    base_dir: Path
    """The folder holding it: relative paths in the file are relative to it."""
    graphs: dict[str, str]
    """graph_id -> import spec (`./file.py:attr` or `package.module:attr`), in file order."""
    descriptions: dict[str, str] = field(default_factory=dict)
    """graph_id -> description, for graphs given as `{"path": ..., "description": ...}`."""
    dependencies: list[str] = field(default_factory=list)
    """Local dependencies (`.`, `./src`, ...) resolved to absolute folder paths."""
    packages: list[str] = field(default_factory=list)
    """Non-local dependencies (PyPI names, git URLs): informational, this server installs nothing."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables from the `.env` file named by `env`, or from an inline mapping."""
    auth: dict[str, Any] | None = None
    store: dict[str, Any] | None = None
    checkpointer: dict[str, Any] | None = None
    http: dict[str, Any] | None = None
    webhooks: dict[str, Any] | None = None
    unknown: dict[str, Any] = field(default_factory=dict)
    """Top-level keys this server does not know, kept as they were."""
    raw: dict[str, Any] = field(default_factory=dict)
    """The whole parsed file, for keys read elsewhere (ui, encryption, ...)."""

    def resolve(self, relative: str | os.PathLike[str]) -> Path:
        """A path written in the file, made absolute against the config's folder."""
        return (self.base_dir / Path(relative).expanduser()).resolve()


def load_config(path: str | os.PathLike[str]) -> ProjectConfig:
    """Read and validate a langgraph.json file (or a folder holding one)."""
    file = Path(path).expanduser()
    if file.is_dir():
        file = file / CONFIG_FILENAME
    file = file.resolve()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read the config file: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{file}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    cfg = parse_config(data, file)
    if cfg.unknown:
        logger.warning(
            "%s: unknown keys ignored: %s",
            file,
            ", ".join(sorted(cfg.unknown)),
            extra={"config": str(file), "unknown_keys": sorted(cfg.unknown)},
        )
    return cfg


def parse_config(data: Any, path: str | os.PathLike[str]) -> ProjectConfig:
    """Validate an already parsed langgraph.json document; `path` is the file it came from
    (relative paths in it are resolved against that file's folder)."""
    file = Path(path).expanduser().resolve()
    base_dir = file.parent

    def fail(problem: str) -> ConfigError:
        return ConfigError(f"{file}: {problem}")

    if not isinstance(data, dict):
        raise fail(f"the top level must be a JSON object, got {_json_type(data)}")

    graphs, descriptions = _parse_graphs(data, fail)
    dependencies, packages = _parse_dependencies(data.get("dependencies"), base_dir, fail)
    env = _parse_env(data.get("env"), base_dir, fail)

    sections: dict[str, dict[str, Any] | None] = {}
    for key in ("auth", "store", "checkpointer", "http", "webhooks"):
        value = data.get(key)
        if value is not None and not isinstance(value, dict):
            raise fail(f"'{key}' must be an object, got {_json_type(value)}")
        sections[key] = value

    unknown = {k: v for k, v in data.items() if k not in KNOWN_KEYS}
    return ProjectConfig(
        path=file,
        base_dir=base_dir,
        graphs=graphs,
        descriptions=descriptions,
        dependencies=dependencies,
        packages=packages,
        env=env,
        unknown=unknown,
        raw=data,
        **sections,
    )


def check_supported(cfg: ProjectConfig) -> None:
    """Refuse a project this server cannot serve as written: one that configures custom
    authentication would otherwise be served as an open API."""
    if cfg.auth:
        raise ConfigError(
            f"{cfg.path}: 'auth' is set, but custom authentication is not implemented yet; "
            "refusing to serve an open API (remove 'auth' to run without authentication)"
        )


def ignored_keys(cfg: ProjectConfig) -> tuple[list[str], list[str]]:
    """What the server ignores in the file: (warning lines, informational lines). Unknown keys are
    warned about by `load_config`."""
    warnings: list[str] = []
    infos: list[str] = []
    present = [key for key in NOT_IMPLEMENTED_KEYS if cfg.raw.get(key) not in (None, {}, [])]
    if present:
        warnings.append(
            f"{cfg.path}: not implemented by agentserver yet, ignored: "
            + ", ".join(f"{key} ({NOT_IMPLEMENTED_KEYS[key]})" for key in present)
        )
    build = sorted(key for key in cfg.raw if key in BUILD_KEYS)
    if build:
        infos.append(f"{cfg.path}: image-build keys, no effect on a running server: " + ", ".join(build))
    if cfg.packages:
        infos.append(
            f"{cfg.path}: dependencies not installed by agentserver (install them into this "
            "environment): " + ", ".join(cfg.packages)
        )
    return warnings, infos


def apply_env(cfg: ProjectConfig) -> None:
    """Set the project's environment variables (never overriding one already set) and make its
    code importable: each local dependency (and the `src/` folder of a src-layout project, which
    the official tooling would have installed) and the config's folder go on `sys.path`."""
    for key, value in cfg.env.items():
        if key not in os.environ:
            os.environ[key] = value
    paths: list[str] = []
    for dep in cfg.dependencies:
        paths.append(dep)
        src = Path(dep) / "src"
        if src.is_dir() and not (Path(dep) / "__init__.py").exists() and _is_project_root(Path(dep)):
            paths.append(str(src))
    paths.append(str(cfg.base_dir))
    # Insert in order at the front (like a script's own folder), skipping ones already there.
    position = 0
    for entry in paths:
        if entry in sys.path:
            continue
        sys.path.insert(position, entry)
        position += 1


def _is_project_root(folder: Path) -> bool:
    return any((folder / name).exists() for name in ("pyproject.toml", "setup.py", "setup.cfg"))


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _parse_graphs(data: dict[str, Any], fail) -> tuple[dict[str, str], dict[str, str]]:
    if "graphs" not in data:
        raise fail("missing 'graphs': map each graph id to './file.py:attribute'")
    raw = data["graphs"]
    if not isinstance(raw, dict):
        raise fail(f"'graphs' must be an object mapping graph ids to specs, got {_json_type(raw)}")
    if not raw:
        raise fail("'graphs' is empty: declare at least one graph")
    graphs: dict[str, str] = {}
    descriptions: dict[str, str] = {}
    for graph_id, spec in raw.items():
        if not graph_id.strip():
            raise fail("'graphs' has an empty graph id")
        if isinstance(spec, dict):
            spec_path = spec.get("path")
            description = spec.get("description")
            if not isinstance(spec_path, str) or not spec_path.strip():
                raise fail(f"graph '{graph_id}': 'path' must be a non-empty string like './file.py:graph'")
            if description is not None and not isinstance(description, str):
                raise fail(f"graph '{graph_id}': 'description' must be a string, got {_json_type(description)}")
            spec = spec_path
            if description:
                descriptions[graph_id] = description
        elif not isinstance(spec, str):
            raise fail(
                f"graph '{graph_id}': expected './file.py:attribute' or an object with 'path', got {_json_type(spec)}"
            )
        spec = spec.strip()
        module_part, _, attr = spec.rpartition(":")
        if not module_part or not all(part.isidentifier() for part in attr.split(".")):
            raise fail(f"graph '{graph_id}': spec {spec!r} must look like './file.py:graph' or 'package.module:graph'")
        graphs[graph_id] = spec
    return graphs, descriptions


def _is_local(dep: str) -> bool:
    return dep.startswith((".", "/", "~")) or (len(dep) > 2 and dep[1] == ":" and dep[2] in "/\\")


def _parse_dependencies(raw: Any, base_dir: Path, fail) -> tuple[list[str], list[str]]:
    if raw is None:
        return [], []
    if not isinstance(raw, list):
        raise fail(f"'dependencies' must be an array of strings, got {_json_type(raw)}")
    local: list[str] = []
    packages: list[str] = []
    for dep in raw:
        if not isinstance(dep, str) or not dep.strip():
            raise fail(f"'dependencies' entries must be non-empty strings, got {dep!r}")
        dep = dep.strip()
        if _is_local(dep):
            resolved = str((base_dir / Path(dep).expanduser()).resolve())
            if not Path(resolved).is_dir():
                raise fail(f"dependency {dep!r} is not a folder ({resolved})")
            if resolved not in local:
                local.append(resolved)
        else:
            packages.append(dep)
    return local, packages


def _parse_env(raw: Any, base_dir: Path, fail) -> dict[str, str]:
    if raw is None:
        return {}
    if isinstance(raw, str):
        env_file = (base_dir / Path(raw).expanduser()).resolve()
        if not env_file.is_file():
            # A .env is usually kept out of version control: a fresh checkout without one should
            # still start (the variables may come from the real environment).
            logger.warning("env file %s (from 'env') does not exist; no variables loaded", env_file)
            return {}
        try:
            values = dotenv_values(env_file)
        except Exception as exc:  # noqa: BLE001 - report any parser failure as a config problem
            raise fail(f"cannot parse env file {env_file}: {exc}") from exc
        return {k: v for k, v in values.items() if v is not None}
    if isinstance(raw, dict):
        env: dict[str, str] = {}
        for key, value in raw.items():
            if isinstance(value, bool):
                env[key] = "true" if value else "false"
            elif isinstance(value, (str, int, float)):
                env[key] = str(value)
            else:
                raise fail(f"'env' value for {key!r} must be a string, got {_json_type(value)}")
        return env
    raise fail(f"'env' must be a path to a .env file or an object of variables, got {_json_type(raw)}")
