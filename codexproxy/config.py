"""config.yaml: pydantic models of the core sections, env overrides, one-line errors.

The core knows only `enabled` of a plugin section; each plugin validates the rest of its own
`plugins.<name>` section with the model it returns from `codexproxy_config_model`.
"""

from __future__ import annotations

import os
import re
import ssl
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

ENV_PREFIX = "CODEXPROXY_"
# A host name (RFC 1123 labels), an IPv4 address or an IPv6 address without brackets.
_HOST_RE = re.compile(r"(?i)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*\.?|[0-9a-f:.]*:[0-9a-f:.]*")


class ConfigError(Exception):
    """A config problem, already worded for the user in one line (key path: problem)."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PluginConfig(Section):
    """Base of every plugin's section. Subclasses add their own keys."""

    enabled: bool = True


class ServerConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(48760, ge=0, le=65535)
    drain_timeout_s: float = Field(10.0, ge=0)
    # Seconds a client has to finish a request head once it started sending it (408 after).
    head_timeout_s: float = Field(30.0, gt=0, le=3600)
    # Host header values accepted besides the loopback names (127.0.0.1, localhost, [::1]):
    # a web page that rebinds its own DNS name to 127.0.0.1 sends its name, and is refused (421).
    allowed_hosts: list[str] = Field(default_factory=list)
    # Worker processes sharing the port, each a full proxy (codexproxy/workers.py); more than one
    # needs a state they all see (state.backend: redis, checked in load_config).
    workers: int = Field(1, ge=1, le=64)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        value = value.strip()
        if not value:
            # mitmproxy reads "" as every interface: that must be said as 0.0.0.0 or ::, not by accident.
            raise ValueError("must not be empty (use 0.0.0.0 or :: to listen on every interface)")
        if not _HOST_RE.fullmatch(value):
            raise ValueError("expected an IP address or a host name")
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _allowed_hosts(cls, values: list[str]) -> list[str]:
        out = []
        for value in values:
            name = value.strip().lower()
            if name.startswith("[") and name.endswith("]"):
                name = name[1:-1]
            if not name or not _HOST_RE.fullmatch(name):
                raise ValueError(f"{value!r} is not a host name or IP address (give it without scheme or port)")
            out.append(name)
        return out


class AdminConfig(Section):
    token: str | None = None  # None: a random token is generated once and kept in the data dir


class StorageConfig(Section):
    path: str = "~/.codexproxy/codexproxy.json"

    @property
    def file(self) -> Path:
        return Path(os.path.expanduser(self.path)).resolve()

    @property
    def data_dir(self) -> Path:
        return self.file.parent


class UpstreamConfig(Section):
    base_url: str = "https://chatgpt.com/backend-api/codex"
    usage_base_url: str = "https://chatgpt.com/backend-api"
    fallback_base_url: str | None = None
    # The API key the fallback upstream (an API-key style Responses endpoint such as
    # https://api.openai.com/v1) is called with; pool tokens never go there.
    fallback_api_key: str | None = None
    connect_timeout_s: float = Field(15.0, gt=0)
    stream_idle_timeout_s: float = Field(300.0, gt=0)
    originator: str = "codex_cli_rs"
    user_agent: str = "codex_cli_rs/0.169.0 (codexproxy)"
    ssl_verify: bool = True
    ca_file: str | None = None

    def httpx_verify(self) -> bool | ssl.SSLContext:
        """httpx's `verify` for every outbound request the proxy makes outside mitmproxy (OAuth,
        usage polls, model lists): the same trust as the proxy path (ssl_verify, ca_file)."""
        if not self.ssl_verify:
            return False
        if self.ca_file:
            return ssl.create_default_context(cafile=self.ca_file)
        return True

    @field_validator("base_url", "usage_base_url", "fallback_base_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        value = value.rstrip("/")
        # A bare ChatGPT origin means its Codex backend (what users paste from the browser).
        if value in ("https://chatgpt.com", "https://chat.openai.com"):
            value += "/backend-api/codex"
        return value


class OAuthConfig(Section):
    issuer: str = "https://auth.openai.com"
    client_id: str = "app_EMoamEEZ73f0CkXaXp7hrann"
    login_addr: str = "127.0.0.1:1455"
    originator: str = "codex_cli_rs"
    login_timeout_s: float = Field(300.0, gt=0)
    allow_non_loopback_login: bool = False
    refresh_lead_s: float = Field(600.0, ge=0)
    pending_login_ttl_s: float = Field(900.0, gt=0)


class LimitsConfig(Section):
    max_body_bytes: int = Field(16 * 1024 * 1024, gt=0)
    account_max_inflight: int = Field(0, ge=0)
    queue_wait_ms: int = Field(0, ge=0)


class JobsConfig(Section):
    usage_poll_interval_s: float = Field(600.0, ge=30)
    keepalive_interval_s: float = Field(180.0, ge=10)
    token_refresh_interval_s: float = Field(60.0, ge=1)
    usage_snapshots_kept: int = Field(200, ge=1)


class MetricsConfig(Section):
    token: str | None = None


class StateConfig(Section):
    """Where cross-request state lives: the embedded store (one process), or a Redis several
    processes and machines share (codexproxy/state_redis.py)."""

    backend: Literal["tinydb", "redis"] = "tinydb"
    # redis://[:password@]host[:port][/db], rediss:// for TLS, unix:///path/redis.sock
    redis_url: str | None = Field(None, validate_default=True)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or not value.strip():
            if info.data.get("backend") == "redis":
                raise ValueError("required when state.backend is redis (e.g. redis://127.0.0.1:6379/0)")
            return None
        value = value.strip()
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value


def redact_url(url: str) -> str:
    """`url` with the password of its user part replaced by '***' (for display)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:  # not a URL after all (an unclosed "[")
        return url if "@" not in url else "***"
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


class Config(Section):
    server: ServerConfig = Field(default_factory=ServerConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    upstream: UpstreamConfig = Field(default_factory=UpstreamConfig)
    oauth: OAuthConfig = Field(default_factory=OAuthConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    jobs: JobsConfig = Field(default_factory=JobsConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    # Raw sections here; each is validated by its plugin's model once plugins are known.
    plugins: dict[str, dict[str, Any]] = Field(default_factory=dict)
    plugin_paths: list[str] = Field(default_factory=list)

    source: Path | None = Field(default=None, exclude=True)
    plugin_sections: dict[str, PluginConfig] = Field(default_factory=dict, exclude=True)

    def plugin(self, name: str) -> PluginConfig:
        """The validated section of plugin `name`."""
        return self.plugin_sections.get(name) or PluginConfig()


def _format_error(exc: ValidationError, prefix: str = "") -> str:
    err = exc.errors()[0]
    path = ".".join(str(p) for p in (prefix.split(".") if prefix else []) + list(err["loc"]))
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    if "input" in err and err["type"] not in ("missing", "extra_forbidden") and not isinstance(err["input"], (dict, list)):
        shown = redact_url(err["input"]) if isinstance(err["input"], str) else err["input"]
        msg += f" (got {shown!r})"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"config error: {path}: {msg}{more}"


def validate_section(model: type[BaseModel], data: Any, prefix: str) -> Any:
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, prefix)) from None


def _read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError:
        return values
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        if line.startswith("export "):
            line = line[7:]
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def _apply_env(raw: dict[str, Any], env: dict[str, str]) -> None:
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__")]
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        try:
            node[path[-1]] = yaml.safe_load(value) if value != "" else None
        except yaml.YAMLError:
            node[path[-1]] = value


def load_config(path: str | os.PathLike | None, environ: dict[str, str] | None = None) -> Config:
    """Read config.yaml (optional), then `codexproxy.env`/`.env` beside it, then the
    environment (which wins), and validate the core sections."""
    environ = dict(os.environ if environ is None else environ)
    raw: dict[str, Any] = {}
    source: Path | None = None
    if path is not None:
        source = Path(path).expanduser()
        try:
            text = source.read_text()
        except FileNotFoundError:
            raise ConfigError(f"config error: file not found: {source}") from None
        except OSError as exc:
            raise ConfigError(f"config error: cannot read {source}: {exc.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"config error: {source}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config error: {source}: the top level must be a mapping of sections")
        raw = loaded
    folder = source.parent if source else Path.cwd()
    file_env: dict[str, str] = {}
    for name in (".env", "codexproxy.env"):  # codexproxy.env is more specific: read last
        file_env.update(_read_env_file(folder / name))
    _apply_env(raw, {**file_env, **environ})
    for key, value in list(raw.items()):
        if isinstance(value, dict) or value is None:
            continue
        if key not in ("plugin_paths",):
            raise ConfigError(f"config error: {key}: must be a mapping (got {value!r})")
    plugins = raw.get("plugins") or {}
    if not isinstance(plugins, dict):
        raise ConfigError("config error: plugins: must be a mapping of plugin name to section")
    for name, section in plugins.items():
        if section is not None and not isinstance(section, dict):
            raise ConfigError(f"config error: plugins.{name}: must be a mapping (e.g. {{enabled: true}})")
    raw["plugins"] = {k: (v or {}) for k, v in plugins.items()}
    for key in [k for k, v in raw.items() if v is None]:
        del raw[key]
    config = validate_section(Config, raw, "")
    if config.server.workers > 1 and config.state.backend != "redis":
        # The embedded state keeps part of itself in each process's memory (state.py's LocalState):
        # workers on it would not share one pool's cooldowns, limits and leases.
        raise ConfigError(f"config error: server.workers: {config.server.workers} worker processes need a shared state "
                          f"(state.backend: redis); state.backend is {config.state.backend}, which serves one process")
    config.source = source
    return config


def masked(config: Config) -> dict[str, Any]:
    """The effective config for display, with every secret replaced by '***'."""
    data = config.model_dump(mode="json")
    data["plugins"] = {name: section.model_dump(mode="json") for name, section in config.plugin_sections.items()}

    def scrub(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: ("***" if v and any(s in k for s in ("token", "cookie", "secret", "password", "key")) and isinstance(v, str) else scrub(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [scrub(v) for v in node]
        return node

    if data["state"].get("redis_url"):
        data["state"]["redis_url"] = redact_url(data["state"]["redis_url"])
    return scrub(data)
