"""Mirror selection and apt sources (dib.mirror): pure functions, no network."""
from __future__ import annotations

from pathlib import Path

import pytest

from dib import mirror
from dib.mirror import MirrorChoice, SourceEntry

# documentation-range host names only; the real ones come from the host at run time
MAIN = "http://mirror.example.test/debian"
SEC = "http://mirror.example.test/debian-security"
OTHER = "http://other.example.test/debian"

DEB822 = f"""Types: deb
# a comment
URIs: {MAIN}
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: {SEC}
Suites: bookworm-security
Components: main
"""


def host() -> list:
    return mirror.parse_deb822(DEB822)


def test_parse_deb822():
    entries = host()
    assert [e.uri for e in entries] == [MAIN, SEC]
    assert entries[0].suites == ("bookworm", "bookworm-updates")
    assert entries[1].is_security and not entries[0].is_security


def test_parse_deb822_skips_disabled_and_keeps_continuations():
    text = f"Types: deb\nURIs: {OTHER}\nSuites: x\nEnabled: no\n\n" \
           f"Types: deb deb-src\nURIs: {MAIN}\n" \
           "Suites: bookworm\nComponents: main\n contrib\n"
    entries = mirror.parse_deb822(text)
    assert [e.uri for e in entries] == [MAIN]
    assert entries[0].components == ("main", "contrib")


def test_parse_one_line_with_options():
    text = f"# comment\ndeb [signed-by=/k.gpg arch=amd64] {MAIN} bookworm main contrib\n" \
           f"deb-src {MAIN} bookworm main\ndeb {SEC} bookworm-security main\n"
    entries = mirror.parse_one_line(text)
    assert entries[0] == SourceEntry(MAIN, ("bookworm",), ("main", "contrib"), ("deb",))
    assert entries[1].types == ("deb-src",)
    assert entries[2].is_security


def test_read_sources(tmp_path: Path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(f"deb {OTHER} bookworm main\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    (tmp_path / "sources.list.d" / "ignored.txt").write_text(f"deb {OTHER} x main\n")
    assert [e.uri for e in mirror.read_sources(tmp_path)] == [OTHER, MAIN, SEC]


def test_parse_os_release():
    assert mirror.parse_os_release('ID=debian\nNAME="Debian GNU/Linux"\n')["ID"] == "debian"
    assert mirror.parse_os_release("ID='ubuntu'\n")["ID"] == "ubuntu"


def test_env_mirror_wins_over_host():
    c = mirror.select_mirrors("debian", {"DIB_DISTRIBUTION_MIRROR": OTHER + "/"}, "debian", host())
    assert c.mirror == OTHER and c.mirror_origin == "DIB_DISTRIBUTION_MIRROR"
    # the security mirror still comes from the host
    assert c.security == SEC and c.security_origin == "the host's apt sources"


def test_dib_debian_distribution_mirror_alias():
    c = mirror.select_mirrors("debian", {"DIB_DEBIAN_DISTRIBUTION_MIRROR": OTHER}, "", [])
    assert c.mirror == OTHER


def test_security_env_wins():
    c = mirror.select_mirrors("debian", {"DIB_DEBIAN_SECURITY_MIRROR": OTHER}, "debian", host())
    assert c.security == OTHER and c.security_origin == "DIB_DEBIAN_SECURITY_MIRROR"
    assert c.mirror == MAIN and not c.warnings


def test_host_sources_used_only_for_same_distribution():
    c = mirror.select_mirrors("debian", {}, "debian", host())
    assert (c.mirror, c.security) == (MAIN, SEC)
    c = mirror.select_mirrors("debian", {}, "ubuntu", host())
    assert c.mirror == "" and c.mirror_origin == "the bootstrap tool's default"
    assert c.security == "" and c.warnings  # left out, with a warning


def test_ubuntu_on_debian_host_uses_tool_default_and_no_security_warning():
    c = mirror.select_mirrors("ubuntu", {}, "debian", host())
    assert c.mirror == "" and c.security == "" and not c.warnings


def test_no_security_known_is_a_warning_not_an_error():
    c = mirror.select_mirrors("debian", {"DIB_DISTRIBUTION_MIRROR": MAIN}, "fedora", [])
    assert c.mirror == MAIN and c.security == ""
    assert "DIB_DEBIAN_SECURITY_MIRROR" in c.warnings[0]


def test_host_without_security_entry():
    entries = mirror.parse_one_line(f"deb {MAIN} bookworm main\n")
    c = mirror.select_mirrors("debian", {}, "debian", entries)
    assert c.mirror == MAIN and c.security == "" and c.warnings


def test_components():
    assert mirror.components({}) == ("main",)
    assert mirror.components({"DIB_DEBIAN_COMPONENTS": "main,contrib, non-free"}) == \
        ("main", "contrib", "non-free")
    assert mirror.components({}, default="main,universe") == ("main", "universe")


def choice(sec: str = SEC) -> MirrorChoice:
    return MirrorChoice(MAIN, sec, "test", "test")


def test_sources_conf_debian():
    assert mirror.sources_conf("debian", "bookworm", ("main", "contrib"), choice()) == [
        ("default", f"deb {MAIN} bookworm main contrib"),
        ("updates", f"deb {MAIN} bookworm-updates main contrib"),
        ("security", f"deb {SEC} bookworm-security main contrib"),
    ]


def test_sources_conf_without_security_and_rolling():
    assert [n for n, _ in mirror.sources_conf("debian", "bookworm", ("main",), choice(""))] == \
        ["default", "updates"]
    assert [n for n, _ in mirror.sources_conf("debian", "testing", ("main",), choice())] == \
        ["default"]


def test_sources_conf_ubuntu():
    lines = mirror.sources_conf("ubuntu", "noble", ("main", "universe"), choice(""),
                                ubuntu_dists=("updates", "security"))
    assert lines == [("default", f"deb {MAIN} noble main universe"),
                     ("updates", f"deb {MAIN} noble-updates main universe"),
                     ("security", f"deb {MAIN} noble-security main universe")]


def test_sources_conf_needs_a_mirror():
    with pytest.raises(ValueError):
        mirror.sources_conf("debian", "bookworm", ("main",), MirrorChoice("", "", "", ""))


def test_parse_sources_conf():
    text = f"default:deb {MAIN} bookworm main\n  mysec:deb {SEC} bookworm-security main\n\n"
    assert mirror.parse_sources_conf(text) == [("default", f"deb {MAIN} bookworm main"),
                                               ("mysec", f"deb {SEC} bookworm-security main")]
    with pytest.raises(ValueError, match="malformed"):
        mirror.parse_sources_conf("no colon here")


def test_no_mirror_host_names_in_code():
    """Mirrors come from the host or the user, never from the code."""
    root = Path(__file__).resolve().parents[2]
    sources = [root / "dib" / f"{m}.py" for m in ("mirror", "bootstrap", "cache")]
    mine = ("apt-sources", "base", "cache-url", "cloud-init-datasources", "debian",
            "debian-minimal", "debootstrap", "devuser", "dib-init-system", "dpkg", "install-bin",
            "install-static", "install-types", "openssh-server", "package-installs", "pkg-map",
            "runtime-ssh-host-keys", "source-repositories", "sysprep", "ubuntu",
            "ubuntu-common", "ubuntu-minimal")
    sources += [p for e in mine for p in (root / "elements" / e).rglob("*") if p.is_file()]
    for p in sources:
        text = p.read_text(errors="replace")
        for needle in ("debian.org", "ubuntu.com", "canonical.com"):
            assert needle not in text, f"{p} names {needle}"
