"""Element resolution: diskimage-builder's rules, its errors, and where we are stricter about
determinism (argument order, hash seed, repeated arguments, comment lines)."""
from __future__ import annotations

import itertools
import subprocess
import sys

import pytest

from dib import resolver
from dib.errors import AlreadyProvided, DibError, ElementNotFound, MissingOperatingSystem
from dib.resolver import implicit_elements, resolve

OS = {"provides": ["operating-system"]}


def names(cat, *requested):
    return resolve(requested, cat).order


# -- expansion and order ---------------------------------------------------------------------

def test_transitive_deps_are_expanded(catalogue):
    cat = catalogue({"os": OS, "a": {"deps": ["b"]}, "b": {"deps": ["c"]}, "c": {},
                     "unrelated": {}})
    assert set(names(cat, "a", "os")) == {"a", "b", "c", "os"}


def test_order_puts_dependencies_first_and_breaks_ties_by_name(catalogue):
    cat = catalogue({"os": OS, "app": {"deps": ["zlib", "alib"]}, "zlib": {"deps": ["core"]},
                     "alib": {"deps": ["core"]}, "core": {}, "tool": {}})
    # core before both libs, both libs before app; free names (os, tool) by name
    assert names(cat, "tool", "app", "os") == ("core", "alib", "os", "tool", "zlib", "app")


def test_operating_system_provider_may_come_through_deps(catalogue):
    cat = catalogue({"debian": {"deps": ["debian-minimal"]}, "debian-minimal": OS})
    assert names(cat, "debian") == ("debian-minimal", "debian")


def test_provided_name_is_dropped_with_the_real_elements_deps(catalogue):
    # like dib's zipl: it provides 'bootloader', so the real 'bootloader' element (and what
    # only it needs) stays out
    cat = catalogue({"os": OS, "vm": {"deps": ["bootloader"]},
                     "bootloader": {"deps": ["grub-bits"]}, "grub-bits": {},
                     "zipl": {"provides": ["bootloader"]}})
    assert names(cat, "vm", "zipl", "os") == ("os", "zipl", "vm")
    assert names(cat, "vm", "os") == ("grub-bits", "bootloader", "os", "vm")
    res = resolve(["vm", "zipl", "os"], cat)
    assert res.provided == {"bootloader": "zipl", "operating-system": "os"}
    assert res.requires("vm") == ("zipl",)


def test_dependency_cycles_are_accepted_and_kept_together(catalogue):
    cat = catalogue({"os": OS, "top": {"deps": ["b"]}, "b": {"deps": ["a", "b"]},
                     "a": {"deps": ["b", "leaf"]}, "leaf": {}})
    assert names(cat, "top", "os") == ("leaf", "a", "b", "os", "top")


def test_comment_and_blank_lines_in_element_deps_are_ignored(catalogue):
    # diskimage-builder would look up an element named '# needs b'
    cat = catalogue({"os": OS, "a": {"deps_text": "# needs b\n\nb\n   \n"}, "b": {}})
    assert names(cat, "a", "os") == ("b", "a", "os")


# -- determinism: better than dib on purpose -----------------------------------------------------

ORDER_TRAP = {"os": OS, "a": {"deps": ["v"]}, "c": {"deps": ["b"]}, "b": {"provides": ["v"]}}


def test_result_does_not_depend_on_argument_order(catalogue):
    # dib: `a c os` fails ("Element 'v' not found") while `c a os` works
    cat = catalogue(ORDER_TRAP)
    results = {names(cat, *p) for p in itertools.permutations(["a", "c", "os"])}
    assert results == {("b", "a", "c", "os")}


def test_virtual_name_next_to_its_provider_in_one_deps_file(catalogue):
    # dib's hash-seed dependent case: a deps {v, b}, b provides v
    cat = catalogue({"os": OS, "a": {"deps": ["v", "b"]}, "b": {"provides": ["v"]}})
    assert names(cat, "a", "os") == ("b", "a", "os")


def test_real_element_shadowed_by_a_later_found_provider_is_not_expanded(catalogue):
    # v is real here; dib pulls in w or not depending on the hash seed
    cat = catalogue({"os": OS, "a": {"deps": ["v", "b"]}, "b": {"provides": ["v"]},
                     "v": {"deps": ["w"]}, "w": {}})
    res = resolve(["a", "os"], cat)
    assert res.order == ("b", "a", "os")
    assert res.provided["v"] == "b"


def test_alias_element_provided_by_its_own_dependency(catalogue):
    # a real 'block-device' that picks a default: vm -> block-device -> mbr (provides it)
    cat = catalogue({"os": OS, "vm": {"deps": ["block-device"]},
                     "block-device": {"deps": ["mbr"]}, "mbr": {"provides": ["block-device"]},
                     "efi": {"provides": ["block-device"]}})
    assert names(cat, "vm", "os") == ("mbr", "os", "vm")
    assert resolve(["vm", "os"], cat).requires("vm") == ("mbr",)
    assert names(cat, "efi", "vm", "os") == ("efi", "os", "vm")
    assert names(cat, "vm", "os", "efi") == ("efi", "os", "vm")


@pytest.mark.parametrize("requested, expected", [
    (["os", "os"], ("os",)),
    (["a", "os", "a", "os"], ("b", "a", "os")),
    (["b", "b", "a", "os"], ("b", "a", "os")),
])
def test_repeating_an_argument_is_harmless_even_for_a_provider(catalogue, requested, expected):
    # dib: `os os` fails with "operating-system: already provided by ['os']"
    cat = catalogue({"os": OS, "a": {"deps": ["b"]}, "b": {"provides": ["thing"]}})
    assert names(cat, *requested) == expected
    assert resolve(requested, cat).requested == tuple(sorted(set(requested)))


def test_result_does_not_depend_on_the_hash_seed(make_elements, repo_root, subprocess_env):
    spec = dict(ORDER_TRAP)
    spec.update({"x": {"deps": ["v", "b", "y"]}, "y": {"deps": ["z1", "z2", "z3"]},
                 "z1": {}, "z2": {}, "z3": {}, "v": {"deps": ["w"]}, "w": {}})
    root = make_elements(spec)
    outputs = set()
    for seed in ("0", "1", "2", "3", "7", "42"):
        for args in (["a", "c", "x", "os"], ["os", "x", "c", "a"]):
            env = dict(subprocess_env, PYTHONHASHSEED=seed, ELEMENTS_PATH=str(root))
            proc = subprocess.run([sys.executable, str(repo_root / "bin" / "element-info"),
                                   "-n", *args],  # -n: this tree alone, no built-in base
                                  env=env, capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr
            outputs.add(proc.stdout)
    assert outputs == {"b a c os z1 z2 z3 y x\n"}


# -- errors --------------------------------------------------------------------------------------

def test_missing_requested_element_names_it_with_paths_and_close_matches(catalogue):
    cat = catalogue({"os": OS, "debian-minimal": {}})
    with pytest.raises(ElementNotFound) as exc:
        resolve(["debian-minimall", "os"], cat)
    assert "'debian-minimall'" in str(exc.value)
    assert "debian-minimal" in exc.value.hint
    assert str(cat.search_path[0]) in exc.value.hint


def test_several_missing_elements_are_reported_together_sorted(catalogue):
    cat = catalogue({"os": OS})
    with pytest.raises(ElementNotFound, match=r"elements not found: 'a-missing', 'z-missing'"):
        resolve(["z-missing", "os", "a-missing"], cat)


def test_missing_dependency_names_the_element_that_wants_it(catalogue):
    cat = catalogue({"os": OS, "app": {"deps": ["libmissing"]}})
    with pytest.raises(ElementNotFound) as exc:
        resolve(["app", "os"], cat)
    assert "'libmissing'" in str(exc.value) and "'app'" in str(exc.value)
    assert "searched:" in exc.value.hint


def test_missing_virtual_dependency_suggests_its_providers(catalogue):
    # dib: `vm ubuntu` fails with "Element 'block-device' not found"
    cat = catalogue({"os": OS, "vm": {"deps": ["block-device"]},
                     "bd-mbr": {"provides": ["block-device"]}})
    with pytest.raises(ElementNotFound) as exc:
        resolve(["vm", "os"], cat)
    assert "'block-device'" in str(exc.value) and "'vm'" in str(exc.value)
    assert "bd-mbr" in exc.value.hint


def test_no_operating_system_is_an_error_listing_candidates(catalogue):
    cat = catalogue({"a": {}, "deb": OS, "ubu": OS})
    with pytest.raises(MissingOperatingSystem) as exc:
        resolve(["a"], cat)
    assert "operating-system" in str(exc.value)
    assert exc.value.hint == "available: deb, ubu"


def test_two_providers_of_one_name_are_an_error_naming_both(catalogue):
    cat = catalogue({"debian": {"deps": ["debian-minimal"]}, "debian-minimal": OS, "ubuntu": OS})
    for requested in (["debian", "ubuntu"], ["ubuntu", "debian"]):
        with pytest.raises(AlreadyProvided) as exc:
            resolve(requested, cat)
        assert str(exc.value) == ("'operating-system' is provided by more than one element: "
                                  "debian-minimal, ubuntu")


@pytest.mark.parametrize("requested", [["vm", "zipl", "bootloader", "os"],
                                       ["bootloader", "os", "zipl", "vm"]])
def test_requesting_a_name_another_element_provides_is_an_error(catalogue, requested):
    cat = catalogue({"os": OS, "vm": {"deps": ["bootloader"]}, "bootloader": {},
                     "zipl": {"provides": ["bootloader"]}})
    with pytest.raises(AlreadyProvided) as exc:
        resolve(requested, cat)
    assert "'bootloader'" in str(exc.value) and "'zipl'" in str(exc.value)


def test_requesting_a_purely_virtual_name_is_an_error(catalogue):
    cat = catalogue({"deb": OS, "ubu": OS})
    with pytest.raises(ElementNotFound) as exc:
        resolve(["operating-system"], cat)
    assert "'operating-system'" in str(exc.value)
    assert "deb, ubu" in exc.value.hint
    with pytest.raises(AlreadyProvided):
        resolve(["operating-system", "deb"], cat)


def test_every_resolution_error_is_a_dib_error_with_exit_status_1():
    for cls in (ElementNotFound, AlreadyProvided, MissingOperatingSystem):
        assert issubclass(cls, DibError) and cls("x").exit_code == 1


# -- the graph and disk-image-create's additions ---------------------------------------------

def test_graph_edges_go_from_dependency_to_dependant_and_record_the_provided_name(catalogue):
    cat = catalogue({"os": OS, "a": {"deps": ["v", "b", "c"]}, "b": {"provides": ["v"]},
                     "c": {"deps": ["virt"]}, "impl": {"provides": ["virt"]}})
    res = resolve(["a", "impl", "os"], cat)
    assert sorted(res.graph.edges) == [("b", "a"), ("c", "a"), ("impl", "c")]
    assert res.graph.edges["b", "a"]["via"] == "b"  # a direct dep wins over the virtual one
    assert res.graph.edges["impl", "c"]["via"] == "virt"
    assert res.requires("a") == ("b", "c")


@pytest.mark.parametrize("given, skip_base, arch, expected", [
    (["vm", "ubuntu"], False, "amd64", ["base", "vm", "ubuntu", "block-device-mbr"]),
    (["vm", "ubuntu"], False, "arm64", ["base", "vm", "ubuntu", "block-device-efi"]),
    (["vm", "block-device-gpt", "ubuntu"], True, "amd64", ["vm", "block-device-gpt", "ubuntu"]),
    (["ubuntu"], False, "amd64", ["base", "ubuntu"]),
])
def test_implicit_elements_match_disk_image_create(given, skip_base, arch, expected):
    assert implicit_elements(given, skip_base=skip_base, arch=arch) == expected


def test_resolution_json_is_complete(catalogue):
    cat = catalogue({"os": OS, "a": {"deps": ["b"]}, "b": {}})
    data = resolver.to_data(resolve(["os", "a"], cat))
    assert data["order"] == ["b", "a", "os"]
    assert data["requested"] == ["a", "os"]
    assert data["provided"] == {"operating-system": "os"}
    assert [e["requires"] for e in data["elements"]] == [[], ["b"], []]
    assert data["elements"][0]["path"] == str(cat["b"].path)
