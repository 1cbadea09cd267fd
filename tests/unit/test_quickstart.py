"""bin/dib-quickstart's login choice: the builder's ssh keys, else a random password that
reaches the build only as a hash."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bin" / "dib-quickstart"


@pytest.fixture(scope="module")
def quickstart() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("dib_quickstart", str(SCRIPT))
    spec = importlib.util.spec_from_loader("dib_quickstart", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _keys(home: Path, *names: str) -> list:
    (home / ".ssh").mkdir(parents=True)
    for n in names:
        (home / ".ssh" / n).write_text(f"ssh-ed25519 AAAA{n} me@host\n")
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE\n")  # never picked up
    return [str(home / ".ssh" / n) for n in names]


def test_keys_of_the_invoking_user_are_found(quickstart, tmp_path, monkeypatch):
    expected = _keys(tmp_path, "id_rsa.pub", "id_ed25519.pub")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SUDO_USER", raising=False)
    assert quickstart.invoking_users_keys() == sorted(expected)


def test_with_keys_the_user_gets_them_and_no_password(quickstart, tmp_path):
    keys = _keys(tmp_path / "home", "id_rsa.pub", "id_ecdsa.pub")
    login, password = quickstart.login_settings({}, keys, str(tmp_path))
    assert password is None
    assert set(login) == {"DIB_DEV_USER_AUTHORIZED_KEYS"}
    text = Path(login["DIB_DEV_USER_AUTHORIZED_KEYS"]).read_text()
    assert text.splitlines() == [Path(k).read_text().strip() for k in keys]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl (apt-get install "
                    "openssl)")
def test_without_keys_a_random_password_goes_to_the_build_only_as_its_hash(quickstart,
                                                                             tmp_path):
    login, password = quickstart.login_settings({}, [], str(tmp_path))
    other_login, other = quickstart.login_settings({}, [], str(tmp_path))
    assert password and other and password != other
    assert len(password) >= 16
    assert set(login) == {"DIB_DEV_USER_PASSWORD_HASH"}
    hashed = login["DIB_DEV_USER_PASSWORD_HASH"]
    assert password not in hashed and hashed.startswith("$6$")
    salt = hashed.split("$")[2]
    again = subprocess.run(["openssl", "passwd", "-6", "-salt", salt, "-stdin"],
                           input=password, capture_output=True, text=True, check=True)
    assert again.stdout.strip() == hashed
    assert not list(tmp_path.iterdir())  # nothing written for the password


@pytest.mark.parametrize("var", ["DIB_DEV_USER_AUTHORIZED_KEYS", "DIB_DEV_USER_PASSWORD",
                                 "DIB_DEV_USER_PASSWORD_HASH"])
def test_the_callers_own_login_settings_win(quickstart, tmp_path, var):
    keys = _keys(tmp_path / "home", "id_rsa.pub")
    assert quickstart.login_settings({var: "x"}, keys, str(tmp_path)) == ({}, None)
    assert quickstart.login_settings({var: "x"}, [], str(tmp_path)) == ({}, None)
