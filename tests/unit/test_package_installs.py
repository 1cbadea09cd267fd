"""package-installs parsing and evaluation on the host (dib.package_installs)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dib import package_installs as pi
from dib.package_installs import PackageInstallsError

ENV = {"ARCH": "amd64", "DIB_RELEASE": "bookworm", "DISTRO_NAME": "debian", "FLAG": "on"}


def lists(doc, env=ENV, element="el"):
    specs = pi.parse(yaml.safe_load(doc) if isinstance(doc, str) else doc, element)
    return pi.collect([(element, specs)], env)


def names(entries):
    return [p for p, _ in entries]


# -- every key -------------------------------------------------------------------------------

def test_null_value_installs_in_install_d():
    out = lists("a:\nb: {}\n")
    assert names(out.install["install.d"]) == ["a", "b"]
    assert not out.uninstall["install.d"] and not out.install["pre-install.d"]


def test_phase():
    out = lists("a:\n  phase: pre-install.d\nb:\n  phase: post-install.d\n")
    assert names(out.install["pre-install.d"]) == ["a"]
    assert names(out.install["post-install.d"]) == ["b"]


def test_uninstall():
    out = lists("a:\n  uninstall: true\n")
    assert names(out.uninstall["install.d"]) == ["a"] and not out.install["install.d"]


def test_build_only_installs_then_uninstalls():
    out = lists("a:\n  build-only: true\n")
    assert names(out.install["install.d"]) == ["a"]
    assert names(out.uninstall["install.d"]) == ["a"]


def test_list_of_dicts():
    out = lists("pv:\n  - phase: pre-install.d\n  - phase: post-install.d\n    uninstall: true\n")
    assert names(out.install["pre-install.d"]) == ["pv"]
    assert names(out.uninstall["post-install.d"]) == ["pv"]


def test_arch_and_not_arch_strip_spaces():
    # dib's bug: "ppc64, ppc64le" did not exclude ppc64le
    doc = "a:\n  arch: amd64, arm64\nb:\n  not-arch: ppc64, ppc64le\nc:\n  arch: [arm64]\n"
    assert names(lists(doc).install["install.d"]) == ["a", "b"]
    assert names(lists(doc, {**ENV, "ARCH": "ppc64le"}).install["install.d"]) == []
    assert names(lists(doc, {**ENV, "ARCH": "arm64"}).install["install.d"]) == ["a", "b", "c"]


def test_when_equal_and_not_equal_with_spaces():
    doc = "a:\n  when: FLAG = on\nb:\n  when: FLAG!=on\nc:\n  when: DIB_RELEASE != trixie\n"
    assert names(lists(doc).install["install.d"]) == ["a", "c"]
    assert names(lists(doc, {**ENV, "FLAG": "off"}).install["install.d"]) == ["b", "c"]


def test_when_list_is_anded():
    doc = ("a:\n  when:\n    - FLAG=on\n    - DIB_RELEASE=bookworm\n"
           "b:\n  when: [FLAG=on, ARCH=arm64]\n")
    assert names(lists(doc).install["install.d"]) == ["a"]


def test_when_value_may_be_empty():
    assert names(lists("a:\n  when: EMPTY=\n", {**ENV, "EMPTY": ""}).install["install.d"]) == ["a"]


def test_when_unset_variable_names_element_package_and_variable():
    with pytest.raises(PackageInstallsError) as err:
        lists("pkg:\n  when: NOT_SET_ANYWHERE = 1\n", element="myel")
    msg = str(err.value)
    assert "myel" in msg and "pkg" in msg and "NOT_SET_ANYWHERE" in msg
    assert "NOT_SET_ANYWHERE" in err.value.hint


def test_installtype():
    doc = "a:\n  installtype: source\nb:\n  installtype: package\n"
    assert names(lists(doc).install["install.d"]) == ["a"]
    env = {**ENV, "DIB_DEFAULT_INSTALLTYPE": "package"}
    assert names(lists(doc, env).install["install.d"]) == ["b"]
    env = {**ENV, "DIB_INSTALLTYPE_my_el": "package"}
    assert names(lists(doc, env, element="my-el").install["install.d"]) == ["b"]


def test_dib_python_version():
    doc = "py2:\n  dib_python_version: 2\npy3:\n  dib_python_version: 3\n"
    assert names(lists(doc).install["install.d"]) == ["py3"]


def test_filters_apply_before_uninstall_bookkeeping():
    # an uninstall filtered out by arch must not cancel anything
    doc = "a:\n  - {}\n  - uninstall: true\n    arch: s390x\n"
    out = lists(doc)
    assert names(out.install["install.d"]) == ["a"] and not out.uninstall["install.d"]


# -- across elements (dib's squash semantics) ------------------------------------------------

def collect(*docs):
    specs = [(f"e{i}", pi.parse(yaml.safe_load(d), f"e{i}")) for i, d in enumerate(docs)]
    return pi.collect(specs, ENV)


def test_uninstall_skipped_when_another_element_installs():
    out = collect("a:\n", "a:\n  uninstall: true\n")
    assert names(out.install["install.d"]) == ["a"] and not out.uninstall["install.d"]


def test_later_install_cancels_earlier_uninstall():
    out = collect("a:\n  uninstall: true\n", "a:\n")
    assert names(out.install["install.d"]) == ["a"] and not out.uninstall["install.d"]


def test_build_only_of_a_wanted_package_is_kept():
    out = collect("a:\n", "a:\n  build-only: true\n")
    assert not out.uninstall["install.d"]
    assert [p for p, _ in out.install["install.d"]].count("a") >= 1


def test_same_package_from_two_elements_is_listed_per_element():
    out = collect("a:\n", "a:\n")
    assert out.install["install.d"] == [("a", "e0"), ("a", "e1")]
    assert [p for p, _, _ in pi.mapped(out.install["install.d"], {})] == ["a"]


# -- bad values ------------------------------------------------------------------------------

@pytest.mark.parametrize("doc,words", [
    ("- a\n- b\n", ["must be a mapping"]),
    ("a: 3\n", ["'a'", "must be empty, a mapping or a list"]),
    ("a:\n  phase: install\n", ["'a'", "phase", "install.d"]),
    ("a:\n  arch: amd64\n  not-arch: arm64\n", ["'a'", "arch", "not-arch"]),
    ("a:\n  arch: 3\n", ["'a'", "arch"]),
    ("a:\n  arch: ' , '\n", ["'a'", "arch", "empty"]),
    ("a:\n  uninstall: maybe\n", ["'a'", "uninstall", "true or false"]),
    ("a:\n  build-only: [1]\n", ["'a'", "build-only"]),
    ("a:\n  when: FLAG\n", ["'a'", "when", "FLAG"]),
    ("a:\n  when: [FLAG=on, 3]\n", ["'a'", "when"]),
    ("a:\n  phaze: install.d\n", ["'a'", "phaze", "unknown key"]),
])
def test_bad_values_name_element_and_key(doc, words):
    with pytest.raises(PackageInstallsError) as err:
        pi.parse(yaml.safe_load(doc), "badel")
    msg = str(err.value)
    assert "badel" in msg
    for w in words:
        assert w in msg, (w, msg)


def test_empty_file_is_nothing():
    assert pi.parse(None, "el") == []


# -- files -----------------------------------------------------------------------------------

def element(tmp_path: Path, name: str, files: dict) -> Path:
    d = tmp_path / name
    for rel, text in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    return d


def test_load_yaml_json_and_legacy_lists(tmp_path):
    d = element(tmp_path, "el", {
        "package-installs.yaml": "a:\n",
        "package-installs.json": json.dumps({"b": {"phase": "pre-install.d"}, "c": None}),
        "post-install.d/package-installs-el": "d\n-e\n# comment\n",
    })
    specs = pi.load_file(d, "el")
    out = pi.collect([("el", specs)], ENV)
    assert names(out.install["install.d"]) == ["c", "a"]
    assert names(out.install["pre-install.d"]) == ["b"]
    assert names(out.install["post-install.d"]) == ["d"]
    assert names(out.uninstall["post-install.d"]) == ["e"]


def test_unparsable_file_names_element(tmp_path):
    d = element(tmp_path, "broken", {"package-installs.yaml": "a: [\n"})
    with pytest.raises(PackageInstallsError, match="broken"):
        pi.load_file(d, "broken")


def test_main_writes_mapped_lists_from_winning_paths(tmp_path, monkeypatch):
    first = element(tmp_path / "first", "el", {
        "package-installs.yaml": "generic:\ntool:\n  build-only: true\nnone:\n",
        "pkg-map": json.dumps({"distro": {"debian": {"generic": "real-pkg"}},
                               "default": {"none": ""}}),
    })
    # a losing copy further down ELEMENTS_PATH: dib merged it, we must not
    element(tmp_path / "second", "el", {"package-installs.yaml": "loser:\n"})
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "dib-elements.json").write_text(json.dumps([{"name": "el", "path": str(first)}]))
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    assert pi.main(["--hooks", str(hooks)]) == 0
    install = (hooks / "dib-package-installs" / "install.d.install").read_text()
    assert install == "real-pkg\tel\tgeneric\ntool\tel\ttool\n"
    assert (hooks / "dib-package-installs" / "install.d.uninstall").read_text() == \
        "tool\tel\ttool\n"
    assert (hooks / "dib-package-installs" / "pre-install.d.install").read_text() == ""
    assert (hooks / "dib-pkg-map" / "el").read_text() == "generic\treal-pkg\nnone\t\n"


def test_main_reports_errors(tmp_path, monkeypatch, capsys):
    d = element(tmp_path, "el", {"package-installs.yaml": "a:\n  when: UNSET_VAR_X=1\n"})
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "dib-elements.json").write_text(json.dumps([{"name": "el", "path": str(d)}]))
    monkeypatch.delenv("UNSET_VAR_X", raising=False)
    assert pi.main(["--hooks", str(hooks)]) == 1
    err = capsys.readouterr().err
    assert "element 'el', package 'a'" in err and "UNSET_VAR_X" in err
