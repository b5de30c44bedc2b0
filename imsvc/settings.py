"""Settings, read once from the environment (and `.env`); nothing else reads os.environ."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

Provider = Literal["openai", "deepseek", "anthropic", "ollama", "echo"]

DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg"}


DEV_SECRET = Path("data") / "dev-jwt-secret"


def dev_secret(path: Path) -> str:
    """Dev mode's signing secret, generated once and kept (readable by its owner only), so that a restart
    of `make run` does not sign everyone out. Only dev mode without a JWT_SECRET reads it."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as file:
        file.write(secret)
    return secret


class SettingsError(Exception):
    """Bad configuration: one line per bad variable."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    database_url: str = "sqlite+aiosqlite:///./data/imsvc.db"
    jwt_secret: str | None = None
    dev_mode: bool = False
    migrate_on_start: bool = True

    ai_provider: Provider | None = None
    ai_api_key: str | None = Field(default=None, validation_alias=AliasChoices("AI_API_KEY", "OPENAI_API_KEY"))
    ai_base_url: str | None = None
    ai_model: str = "gpt-4o-mini"
    ai_temperature: float = Field(default=0.7, ge=0, le=2)
    ai_max_tokens: int = Field(default=1000, ge=1)
    ai_system_prompt: str = "你是一个AI助手，请友好地回复用户。"
    ai_context_messages: int = Field(default=20, ge=1)
    ai_context_chars: int = Field(default=12000, ge=1)
    ai_timeout_s: float = Field(default=300, gt=0)
    ai_max_concurrency: int = Field(default=32, ge=1)
    ai_max_queue: int = Field(default=1000, ge=0)
    ai_bot_user_id: str = Field(default="ai_bot", pattern=r"^[A-Za-z0-9_.:@-]{1,48}$")
    ai_bot_mention: str = Field(default="@assistant", min_length=1, max_length=64)
    ai_models: str = ""  # comma-separated models a session may choose; empty: any
    ai_echo_delay_ms: int = Field(default=40, ge=0)

    websocket_max_connections: int = Field(default=1000, ge=1)
    ws_send_queue: int = Field(default=1000, ge=1)
    rate_limit_messages: int = Field(default=20, ge=0)
    rate_limit_window_s: float = Field(default=10, gt=0)
    bus: Literal["memory", "postgres"] = "memory"
    replica_heartbeat_s: float = Field(default=5, gt=0)
    replica_timeout_s: float = Field(default=20, gt=0)
    shutdown_grace_s: float = Field(default=10, ge=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    cors_origins: str | None = None

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("ai_provider", "ai_api_key", "ai_base_url", "jwt_secret", "cors_origins", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError("not a database URL") from None
        backend = url.get_backend_name()
        if backend not in DRIVERS:
            raise ValueError("use sqlite+aiosqlite:// or postgresql+asyncpg://")
        return url.set(drivername=DRIVERS[backend]).render_as_string(hide_password=False)

    @field_validator("ai_base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @model_validator(mode="after")
    def _defaults(self) -> Settings:
        if self.ai_provider is None:
            self.ai_provider = "openai" if self.ai_api_key else "echo"
        # Ollama and self-hosted endpoints (AI_BASE_URL) take no key; the hosted providers do.
        if self.ai_provider in ("openai", "deepseek", "anthropic") and not self.ai_api_key and not self.ai_base_url:
            raise ValueError(f"AI_API_KEY: required for AI_PROVIDER={self.ai_provider}")
        if self.bus == "postgres" and not self.database_url.startswith("postgresql"):
            raise ValueError("BUS: postgres needs a PostgreSQL DATABASE_URL")
        if self.jwt_secret is None:
            if not self.dev_mode:
                raise ValueError("JWT_SECRET: required unless DEV_MODE=true (or --dev)")
            self.jwt_secret = dev_secret(DEV_SECRET)
        return self

    @property
    def provider(self) -> Provider:
        assert self.ai_provider is not None
        return self.ai_provider

    @property
    def secret(self) -> str:
        assert self.jwt_secret is not None
        return self.jwt_secret

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def ai_model_list(self) -> list[str]:
        return [m.strip() for m in self.ai_models.split(",") if m.strip()]

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in (self.cors_origins or "").split(",") if o.strip()]


def load_settings(**overrides: Any) -> Settings:
    """Read the settings; every bad variable becomes one line of a SettingsError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = "_".join(str(p) for p in err["loc"]).upper()
            message = err["msg"].removeprefix("Value error, ")
            lines.append(f"{name}: {message}" if name else message)
        raise SettingsError(lines) from None
