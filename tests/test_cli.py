"""The command line: configuration errors, token minting, migrations from any directory."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imsvc.app import GC_YOUNG_THRESHOLD, tune_gc
from imsvc.auth import verify_token
from imsvc.settings import SettingsError, load_settings

OURS = ("AI_", "JWT_", "DATABASE_", "DEV_", "OPENAI_", "BUS")
CLEAN = {k: v for k, v in os.environ.items() if not k.startswith(OURS)}


def imsvc(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imsvc", *args],
        cwd=cwd,
        env={**CLEAN, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "JWT_SECRET"),
        ({"DEV_MODE": "true", "AI_PROVIDER": "skynet"}, "AI_PROVIDER"),
        ({"DEV_MODE": "true", "DATABASE_URL": "mysql://db/x"}, "DATABASE_URL"),
        ({"DEV_MODE": "true", "DATABASE_URL": "::::"}, "DATABASE_URL"),
        ({"DEV_MODE": "true", "AI_BASE_URL": "ftp://x"}, "AI_BASE_URL"),
        ({"DEV_MODE": "true", "AI_MAX_CONCURRENCY": "lots"}, "AI_MAX_CONCURRENCY"),
        ({"DEV_MODE": "true", "BUS": "kafka"}, "BUS"),
        ({"DEV_MODE": "true", "BUS": "postgres"}, "BUS"),
        ({"DEV_MODE": "maybe"}, "DEV_MODE"),
    ],
)
def test_bad_configuration_stops_serve_with_one_line_and_exit_2(
    tmp_path: Path, env: dict[str, str], variable: str
) -> None:
    result = imsvc("serve", cwd=tmp_path, **env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0], result.stderr


def test_workers_need_the_postgres_bus(tmp_path: Path) -> None:
    result = imsvc("serve", "--dev", "--workers", "2", cwd=tmp_path)
    assert result.returncode == 2 and "BUS" in result.stderr


def test_each_bad_variable_gets_its_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AI_PROVIDER", "nope")
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None)
    names = sorted(line.split(":")[0] for line in caught.value.lines)
    assert names == ["AI_PROVIDER", "LOG_FORMAT"]


def test_defaults_and_provider_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AI_API_KEY", "OPENAI_API_KEY", "AI_PROVIDER"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(_env_file=None, dev_mode=True)
    assert settings.provider == "echo" and settings.database_url == "sqlite+aiosqlite:///./data/imsvc.db"
    assert settings.ai_model == "gpt-4o-mini" and settings.ai_context_messages == 20
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    assert load_settings(_env_file=None, dev_mode=True).provider == "openai"
    monkeypatch.setenv("DATABASE_URL", "postgres://u@h/db")
    assert load_settings(_env_file=None, dev_mode=True).database_url == "postgresql+asyncpg://u@h/db"


def test_dotenv_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JWT_SECRET", raising=False)
    (tmp_path / ".env").write_text("JWT_SECRET=from-dotenv\nAI_MODEL=tiny\n")
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.secret == "from-dotenv" and settings.ai_model == "tiny"


def test_token_command_mints_a_verifiable_token(tmp_path: Path) -> None:
    result = imsvc("token", "alice", "--ttl", "60", cwd=tmp_path, JWT_SECRET="s3cret")
    assert result.returncode == 0, result.stderr
    assert verify_token("s3cret", result.stdout.strip(), "ai_bot") == "alice"


def test_token_command_refuses_without_secret_or_with_bad_user(tmp_path: Path) -> None:
    assert imsvc("token", "alice", cwd=tmp_path, DEV_MODE="true").returncode == 2
    bad = imsvc("token", "not valid", cwd=tmp_path, JWT_SECRET="s3cret")
    assert bad.returncode == 2 and "user id" in bad.stderr


def test_migrate_works_from_any_directory(tmp_path: Path, empty_database_url: str) -> None:
    result = imsvc("migrate", cwd=tmp_path, DATABASE_URL=empty_database_url)
    assert result.returncode == 0, result.stderr
    again = imsvc("migrate", cwd=tmp_path, DATABASE_URL=empty_database_url)
    assert again.returncode == 0


def test_a_serving_process_freezes_what_it_built_and_collects_less_often() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD > before[0]
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
