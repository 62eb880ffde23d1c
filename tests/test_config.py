import pytest

from calseg.config import INDICATORS, Settings, parse_bytes
from calseg.errors import ConfigError


def test_defaults_valid_and_toml_roundtrip(tmp_path):
    s = Settings().validated()
    p = tmp_path / "s.toml"
    p.write_text(s.to_toml())
    assert Settings.from_toml(p) == s


def test_toml_overrides_and_unknown_keys(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text('[calseg]\nfps = 7.5\nspatial = [1, 2, 0.5]\n')
    s = Settings.from_toml(p)
    assert s.fps == 7.5 and s.spatial == (1.0, 2.0, 0.5)
    p.write_text('[calseg]\nfsp = 7.5\n')
    with pytest.raises(ConfigError, match="fsp"):
        Settings.from_toml(p)


@pytest.mark.parametrize("key,value,words", [
    ("fps", -1, "must be > 0"), ("connectivity", 6, "allowed: 4, 8"), ("spatial", (1, 1), "3 numbers"),
    ("temporal", (0, 0), "must be > 0"), ("max_memory", "lots", "memory size"), ("tol", 0, "> 0"),
    ("indicator", "gcamp99", "unknown"), ("certify", "yes", "true or false"),
    ("scheduler", "tcp://host :8786", "scheduler address"), ("scheduler", 8786, "scheduler address")])
def test_bad_values_name_key_value_and_rule(key, value, words):
    with pytest.raises(ConfigError) as info:
        Settings().replace(**{key: value})
    msg = str(info.value)
    assert key in msg and words in msg


def test_bad_toml(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text("fps = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Settings.from_toml(p)


def test_indicator_sets_decay_and_explicit_tau_wins():
    s = Settings(indicator="gcamp6f").validated()
    assert s.decay() == INDICATORS["gcamp6f"]
    assert Settings(indicator="gcamp6f", tau=2.0).decay()[0] == 2.0
    assert Settings().decay() == (None, None)


def test_diameter_units():
    assert Settings(cell_diameter=12).diameter_px(None) == 12
    assert Settings(cell_diameter=15, diameter_unit="um").diameter_px(1.25) == 12
    with pytest.raises(ConfigError, match="pixel size"):
        Settings(cell_diameter=15, diameter_unit="um").diameter_px(None)


def test_parse_bytes():
    assert parse_bytes("4GB") == 4_000_000_000
    assert parse_bytes("512MiB") == 512 * 2**20
    with pytest.raises(ValueError):
        parse_bytes("-1GB")
