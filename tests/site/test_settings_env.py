"""Settings read the environment loudly: a bad value stops start-up with its name."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from chatsite.env import env_bool, env_choice, env_float, env_int, env_list, secret_key


@pytest.mark.parametrize("raw, expected", [("1", True), ("yes", True), ("Off", False), ("0", False), ("", False)])
def test_env_bool_reads_the_usual_spellings(monkeypatch, raw, expected):
    monkeypatch.setenv("X_FLAG", raw)
    assert env_bool("X_FLAG", False) is expected


@pytest.mark.parametrize(
    "reader, raw, message",
    [
        (lambda: env_bool("X"), "maybe", "X='maybe' is not a boolean"),
        (lambda: env_int("X", 1), "ten", "X='ten' is not an integer"),
        (lambda: env_int("X", 1, minimum=1), "0", "X=0 is below the minimum 1"),
        (lambda: env_float("X", 1.0), "fast", "X='fast' is not a number"),
        (lambda: env_choice("X", "cpu", ["cpu", "cuda"]), "tpu", "X='tpu' must be one of cpu, cuda"),
    ],
)
def test_bad_values_raise_improperly_configured(monkeypatch, reader, raw, message):
    monkeypatch.setenv("X", raw)
    with pytest.raises(ImproperlyConfigured, match=message):
        reader()


def test_env_list_splits_on_commas(monkeypatch):
    monkeypatch.setenv("HOSTS", "a.example, b.example,,")
    assert env_list("HOSTS", []) == ["a.example", "b.example"]
    monkeypatch.delenv("HOSTS")
    assert env_list("HOSTS", ["x"]) == ["x"]


def test_the_secret_key_is_generated_once_into_a_private_file(monkeypatch, tmp_path):
    monkeypatch.delenv("SECRET_KEY", raising=False)
    path = tmp_path / "secret_key"
    first = secret_key("SECRET_KEY", path)
    assert len(first) > 40 and secret_key("SECRET_KEY", path) == first
    assert path.stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("SECRET_KEY", "from-env")
    assert secret_key("SECRET_KEY", path) == "from-env"
