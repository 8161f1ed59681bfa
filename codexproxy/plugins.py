"""Finding, configuring and registering plugins.

Built-in plugins are listed in DEFAULT_PLUGINS and registered exactly like third-party ones
(`plugin_paths` in config, or the `codexproxy` entry-point group): there is no private path.
A plugin whose section says `enabled: false` is not registered at all, so none of its hooks run.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from . import hookspecs
from .config import Config, ConfigError, PluginConfig, validate_section

log = logging.getLogger("codexproxy.plugins")

# name in config.yaml -> module. Order matters only for hooks of equal priority.
DEFAULT_PLUGINS: dict[str, str] = {
    "core": "codexproxy.builtin",
    "hostcheck": "codexproxy.hostcheck",
    "auth": "codexproxy_plugins.auth",
    "adapter": "codexproxy_plugins.adapter",
    "routing": "codexproxy_plugins.routing",
    "cookies": "codexproxy_plugins.cookies",
    "logging": "codexproxy_plugins.requestlog",
    "accounts": "codexproxy_plugins.accounts",
    "admin": "codexproxy_plugins.admin",
}
ALWAYS_ON = ("core", "hostcheck")
ENTRY_POINT_GROUP = "codexproxy"


@dataclass
class PluginInfo:
    name: str
    module: str
    source: str  # "builtin", "entry point", or the path it was loaded from
    enabled: bool
    hooks: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "module": self.module, "source": self.source, "enabled": self.enabled, "hooks": self.hooks}


def _load_path(entry: str, base: Path | None) -> list[tuple[str, ModuleType, str]]:
    """A `plugin_paths` entry: a .py file, a directory of them, or an importable module name."""
    path = Path(os.path.expanduser(entry))
    if not path.is_absolute() and base is not None and (base / path).exists():
        path = base / path
    if path.is_dir():
        files = sorted(p for p in path.glob("*.py") if not p.name.startswith("_"))
    elif path.suffix == ".py":
        if not path.exists():
            raise ConfigError(f"config error: plugin_paths: file not found: {entry}")
        files = [path]
    else:
        try:
            module = importlib.import_module(entry)
        except ImportError as exc:
            raise ConfigError(f"config error: plugin_paths: cannot import {entry!r}: {exc}") from None
        return [(entry.rsplit(".", 1)[-1], module, entry)]
    loaded = []
    for file in files:
        mod_name = f"codexproxy_user_plugin_{file.stem}"
        spec = importlib.util.spec_from_file_location(mod_name, file)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # a broken user plugin is a config problem, told in one line
            raise ConfigError(f"config error: plugin_paths: {file} failed to load: {exc.__class__.__name__}: {exc}") from None
        loaded.append((file.stem, module, str(file)))
    return loaded


def discover(config: Config) -> list[tuple[str, ModuleType, str]]:
    found: list[tuple[str, ModuleType, str]] = []
    for name, module_name in DEFAULT_PLUGINS.items():
        found.append((name, importlib.import_module(module_name), "builtin"))
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            found.append((ep.name, ep.load(), "entry point"))
        except Exception as exc:
            log.warning("plugin %s (entry point) failed to load: %s", ep.name, exc)
    base = config.source.parent if config.source else None
    for entry in config.plugin_paths:
        found.extend(_load_path(entry, base))
    return found


def _summary(value: Any, depth: int = 0) -> str:
    """What tracing shows of a hook argument or result: its shape, never its content.

    Any string can be a secret (a token, a cookie, the one-time login URL that browser_url
    returns), and objects carry them in fields (an Account's tokens, an Attempt's headers
    and body), so strings show only their length and objects only their type and id."""
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, (str, bytes)):
        return f"<{type(value).__name__} of {len(value)}>"
    if depth >= 2:
        return f"<{type(value).__name__}>"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k if isinstance(k, str) and k.isidentifier() else '?'}: {_summary(v, depth + 1)}"
                               for k, v in list(value.items())[:12]) + ("..." if len(value) > 12 else "") + "}"
    if isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
        return "[" + ", ".join(_summary(v, depth + 1) for v in items[:8]) + ("..." if len(items) > 8 else "") + "]"
    ident = getattr(value, "id", None)
    return f"<{type(value).__name__}{f' {ident}' if isinstance(ident, str) and len(ident) <= 40 else ''}>"


def _trace(pm: pluggy.PluginManager) -> None:
    trace_log = logging.getLogger("codexproxy.hooks")

    def before(hook_name, hook_impls, kwargs):
        # Header names are useful and harmless; everything else is summarised (see _summary).
        shown = {k: (sorted(v) if k == "headers" and isinstance(v, dict) else _summary(v)) for k, v in kwargs.items() if k != "app"}
        trace_log.info("call %s(%s) -> %s", hook_name, shown, [i.plugin_name for i in hook_impls])

    def after(outcome, hook_name, hook_impls, kwargs):
        exc = outcome.exception
        # An exception's message can quote what it failed on: its type only.
        trace_log.info("done %s: %s", hook_name, f"raised {type(exc).__name__}" if exc else _summary(outcome.get_result()))

    pm.add_hookcall_monitoring(before, after)


def load_plugins(config: Config) -> tuple[pluggy.PluginManager, list[PluginInfo]]:
    """Validate every plugin's section and register the enabled plugins."""
    pm = pluggy.PluginManager("codexproxy")
    pm.add_hookspecs(hookspecs)
    found = discover(config)
    names = [name for name, _, _ in found]
    for name in config.plugins:
        if name not in names:
            raise ConfigError(f"config error: plugins.{name}: unknown plugin (known: {', '.join(n for n in names if n not in ALWAYS_ON)})")
    infos = []
    for name, module, source in found:
        model_fn = getattr(module, "codexproxy_config_model", None)
        model = model_fn() if model_fn else PluginConfig
        section: PluginConfig = validate_section(model, config.plugins.get(name, {}), f"plugins.{name}")
        if name in ALWAYS_ON:
            section.enabled = True
        config.plugin_sections[name] = section
        if section.enabled:
            if pm.is_registered(module) or pm.has_plugin(name):
                raise ConfigError(f"config error: plugins: two plugins are called {name!r}")
            pm.register(module, name=name)
        hooks = sorted(attr for attr in dir(module) if attr.startswith("codexproxy_") and callable(getattr(module, attr)))
        infos.append(PluginInfo(name, module.__name__, source, section.enabled, hooks))
    if os.environ.get("CODEXPROXY_TRACE_HOOKS"):
        _trace(pm)
    return pm, infos
