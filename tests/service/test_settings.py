"""Settings come from MLA_* environment variables, validated."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLA_MODEL_DIR", "/models/x")
    monkeypatch.setenv("MLA_PROVIDERS", "cpu")
    monkeypatch.setenv("MLA_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("MLA_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("MLA_API_KEY", "s3cret")
    s = Settings()
    assert s.model_dir == Path("/models/x")
    assert s.providers == ["cpu"]
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.max_batch_size == 16
    assert s.api_key is not None
    assert s.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)


@pytest.mark.parametrize(("name", "value"), [("MLA_PROVIDERS", "tpu"), ("MLA_MAX_UPLOAD_BYTES", "-1"), ("MLA_LOG_FORMAT", "xml")])
def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()
