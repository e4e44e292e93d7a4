"""Settings: names from the specification, derived URLs, and clear errors."""

import pytest

from comfygram.settings import ConfigError, Settings, load_settings


def settings(**values) -> Settings:
    return Settings(_env_file=None, **values)


def test_redis_url_is_built_from_parts_with_the_password_escaped():
    built = settings(redis_host="cache", redis_port=6380, redis_db=2, redis_password="p@ss/word")
    assert built.redis_dsn == "redis://:p%40ss%2Fword@cache:6380/2"
    assert settings().redis_dsn == "redis://127.0.0.1:6379/0"


def test_redis_url_wins_over_parts():
    assert settings(redis_url="redis://other:1/3", redis_host="x").redis_dsn == "redis://other:1/3"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@db/cg", "postgresql+asyncpg://u:p@db/cg"),
        ("postgres://u@db/cg", "postgresql+asyncpg://u@db/cg"),
        ("sqlite:///./data/x.db", "sqlite+aiosqlite:///./data/x.db"),
        ("postgresql+asyncpg://u@db/cg", "postgresql+asyncpg://u@db/cg"),
    ],
)
def test_database_url_gets_the_async_driver(given, expected):
    assert settings(database_url=given).database_dsn == expected


def test_defaults_are_a_one_machine_install():
    default = settings()
    assert default.database_dsn.startswith("sqlite+aiosqlite:///")
    assert default.telegram_api_url == "https://api.telegram.org"
    assert (default.backend_host, default.backend_port) == ("127.0.0.1", 8000)
    assert default.package("small").stars == 50


def test_credit_packages_come_from_json(monkeypatch):
    monkeypatch.setenv("CREDIT_PACKAGES", '[{"id": "x", "credits": 1, "stars": 2}]')
    assert [p.id for p in load_settings(_env_file=None).credit_packages] == ["x"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REDIS_PORT", "0"),
        ("MAX_ATTEMPTS", "many"),
        ("CREDIT_PACKAGES", '[{"id": "x", "credits": -1, "stars": 2}]'),
        # Past the payments table's 32-bit columns: refused here, not a 500 at /buy.
        ("CREDIT_PACKAGES", '[{"id": "x", "credits": 2147483648, "stars": 2}]'),
        ("CREDIT_PACKAGES", '[{"id": "x", "credits": 1, "stars": 2147483648}]'),
        ("WEBHOOK_SECRET", "bad secret"),
    ],
)
def test_malformed_values_name_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"^{name} is malformed"):
        load_settings(_env_file=None)


def test_require_names_the_missing_setting():
    with pytest.raises(ConfigError, match=r"^BOT_TOKEN is not set"):
        settings(bot_token="").require("bot_token")


def test_secrets_are_listed_for_redaction_and_hidden_in_repr():
    configured = settings(api_token="tok-123", bot_token="1:abc", redis_password="pw-9")
    assert set(configured.secrets()) == {"tok-123", "1:abc", "pw-9"}
    assert "tok-123" not in repr(configured)


def test_a_malformed_value_says_where_it_was_set(monkeypatch, tmp_path):
    env_file = tmp_path / "prod.env"
    env_file.write_text("ADMIN_TELEGRAM_IDS=123,456\n")
    with pytest.raises(ConfigError, match=rf"\[123456789, 987654321\] \(set in {env_file}\)$"):
        load_settings(_env_file=env_file)
    monkeypatch.setenv("ADMIN_TELEGRAM_IDS", "[1, 2")
    with pytest.raises(ConfigError, match=r"\(set in the environment\)$"):
        load_settings(_env_file=env_file)
