"""The element-info command: default, --env, --list, --graph and --json outputs, exit codes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

OS = {"provides": ["operating-system"]}
TREE = {
    "os": dict(OS, readme="==\nos\n==\n\nA pretend operating system.\n"),
    "app": {"deps": ["lib", "virt"], "readme": "Runs the app.\n"},
    "lib": {},
    "impl": {"provides": ["virt"]},
}


@pytest.fixture
def tree(make_elements):
    return make_elements(TREE)


# -- default output ----------------------------------------------------------------------

def test_prints_the_expanded_set_on_one_line_in_order(element_info, tree):
    rc, out, err = element_info("-n", "os", "app", "impl", path=[tree])
    assert (rc, out) == (0, "impl lib app os\n")
    assert err == ""


def test_expand_dependencies_flag_is_a_no_op(element_info, tree):
    plain = element_info("-n", "app", "impl", "os", path=[tree])
    assert element_info("-n", "-d", "app", "impl", "os", path=[tree]) == plain
    assert element_info("-n", "--expand-dependencies", "app", "impl", "os",
                        path=[tree]) == plain


def test_override_warning_goes_to_stderr_naming_both_paths(element_info, tree, make_elements):
    mine = make_elements({"lib": {"deps": ["extra"]}, "extra": {}}, under="mine")
    rc, out, err = element_info("-n", "app", "impl", "os", path=[mine, tree])
    assert (rc, out) == (0, "extra impl lib app os\n")
    assert "warning" in err
    assert str((mine / "lib").resolve()) in err and str((tree / "lib").resolve()) in err


# -- --env --------------------------------------------------------------------------------

def test_env_output_has_diskimage_builders_exact_format(element_info, tree):
    rc, out, _ = element_info("-n", "--env", "app", "impl", "os", path=[tree])
    p = {n: (tree / n).resolve() for n in ("impl", "lib", "app", "os")}
    assert rc == 0
    assert out == (
        "export IMAGE_ELEMENT='impl lib app os'\n"
        f"export IMAGE_ELEMENT_YAML='app: {p['app']}\n"
        f"impl: {p['impl']}\n"
        f"lib: {p['lib']}\n"
        f"os: {p['os']}\n"
        "'\n"
        "function get_image_element_array {\n"
        f"  echo \"[impl]={p['impl']} [lib]={p['lib']} [app]={p['app']} [os]={p['os']} \"\n"
        "};\n"
        "export -f get_image_element_array;\n")


def _eval_in_bash(env_text: str) -> str:
    script = (env_text + 'eval declare -A arr=($(get_image_element_array))\n'
              'for k in "${!arr[@]}"; do echo "$k=${arr[$k]}"; done | sort\n'
              'echo "--"; echo "$IMAGE_ELEMENT"; echo "--"; echo "$IMAGE_ELEMENT_YAML"\n'
              'bash -c "declare -F get_image_element_array"\n')  # exported to children
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_env_output_evaluates_in_bash_as_dib_consumes_it(element_info, tree):
    _, out, _ = element_info("-n", "-e", "app", "impl", "os", path=[tree])
    array, names, rest = _eval_in_bash(out).split("--\n")
    assert array.splitlines() == [f"{n}={(tree / n).resolve()}"
                                  for n in ("app", "impl", "lib", "os")]
    assert names == "impl lib app os\n"
    yaml_text, declared = rest.rsplit("\n", 2)[0], rest.rsplit("\n", 2)[1]
    assert yaml.safe_load(yaml_text) == {n: str((tree / n).resolve())
                                         for n in ("impl", "lib", "app", "os")}
    assert declared == "get_image_element_array"


def test_env_output_survives_a_quote_in_an_element_path(element_info, make_elements):
    root = make_elements({"os": OS}, under="it's here")
    _, out, _ = element_info("-n", "--env", "os", path=[root])
    array, names, rest = _eval_in_bash(out).split("--\n")
    assert names == "os\n"
    assert yaml.safe_load(rest.rsplit("\n", 2)[0]) == {"os": str((root / "os").resolve())}


# -- --list -------------------------------------------------------------------------------

def test_list_shows_every_element_path_and_readme_line(element_info, tree, make_elements):
    mine = make_elements({"lib": {"readme": "My own lib.\n"}}, under="mine")
    rc, out, _ = element_info("--list", path=[mine, tree])
    assert rc == 0
    rows = [line.split(None, 2) for line in out.splitlines()]
    assert [r[0] for r in rows] == ["app", "impl", "lib", "os"]
    assert rows[2][1:] == [str((mine / "lib").resolve()), "My own lib."]
    assert rows[3][1:] == [str((tree / "os").resolve()), "A pretend operating system."]
    assert rows[1][1:] == [str((tree / "impl").resolve())]  # no README, no summary


def test_list_json(element_info, tree, make_elements):
    mine = make_elements({"lib": {}}, under="mine")
    rc, out, _ = element_info("--list", "--json", path=[mine, tree])
    rows = {r["name"]: r for r in json.loads(out)}
    assert rc == 0 and sorted(rows) == ["app", "impl", "lib", "os"]
    assert rows["app"] == {"name": "app", "path": str((tree / "app").resolve()),
                           "summary": "Runs the app.", "deps": ["lib", "virt"],
                           "provides": [], "overrides": []}
    assert rows["lib"]["overrides"] == [str((tree / "lib").resolve())]
    assert rows["os"]["provides"] == ["operating-system"]


def test_list_with_no_elements_anywhere_prints_nothing(element_info):
    assert element_info("--list") == (0, "", "")
    assert element_info("--list", "--json") == (0, "[]\n", "")


def test_list_takes_no_element_arguments(element_info, tree):
    rc, out, err = element_info("--list", "app", path=[tree])
    assert (rc, out) == (2, "") and "--list takes no ELEMENT" in err


# -- --graph and --json ---------------------------------------------------------------------

def test_graph_is_dot_with_dependant_to_dependency_edges(element_info, tree):
    rc, out, _ = element_info("-n", "--graph", "app", "impl", "os", path=[tree])
    assert rc == 0
    lines = [line.strip() for line in out.splitlines()]
    assert lines[1] == "digraph elements {" and lines[-1] == "}"
    assert '"app" -> "lib";' in lines
    assert '"app" -> "impl" [style=dashed, label="virt"];' in lines
    assert '"app" [style=bold];' in lines and '"lib";' in lines
    assert sum("->" in line for line in lines if not line.startswith("//")) == 2


def test_json_is_the_resolution(element_info, tree):
    rc, out, _ = element_info("-n", "--json", "os", "app", "impl", path=[tree])
    data = json.loads(out)
    assert rc == 0
    assert data["order"] == ["impl", "lib", "app", "os"]
    assert data["requested"] == ["app", "impl", "os"]
    assert data["provided"] == {"operating-system": "os", "virt": "impl"}
    app = data["elements"][2]
    assert app["name"] == "app" and app["requires"] == ["impl", "lib"]
    assert app["deps"] == ["lib", "virt"] and app["path"] == str((tree / "app").resolve())


@pytest.mark.parametrize("mode", ["--env", "--graph"])
def test_json_wins_over_env_and_graph(element_info, tree, mode):
    plain = element_info("-n", "--json", "app", "impl", "os", path=[tree])
    assert element_info("-n", mode, "--json", "app", "impl", "os", path=[tree]) == plain


@pytest.mark.parametrize("argv", [["--env", "--graph", "os"], ["--list", "--env"], []])
def test_usage_errors_exit_2(element_info, tree, argv):
    rc, out, err = element_info(*argv, path=[tree])
    assert rc == 2 and out == "" and "usage:" in err


# -- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, culprit", [
    (["nosuch", "os"], "'nosuch'"),
    (["app", "os"], "'virt'"),
    (["app", "impl"], "operating-system"),
    (["os", "os2"], "more than one element"),
    (["virt", "impl", "os"], "'virt'"),
])
def test_errors_exit_1_with_message_and_hint_and_no_traceback(element_info, make_elements,
                                                              argv, culprit):
    root = make_elements(dict(TREE, os2=OS))
    rc, out, err = element_info("-n", *argv, path=[root])
    assert rc == 1 and out == ""
    assert err.startswith("error: ") and culprit in err.splitlines()[0]
    assert "Traceback" not in err


def test_missing_element_hint_names_searched_paths_and_close_match(element_info, tree,
                                                                    empty_builtin):
    rc, _, err = element_info("-n", "ap", "os", path=[tree])
    assert rc == 1
    hint = [line for line in err.splitlines() if line.startswith("hint: ")][0]
    assert "did you mean app" in hint and f"{tree}:{empty_builtin}" in hint


def test_bad_elements_path_entry_is_named(element_info, tree, tmp_path):
    rc, _, err = element_info("-n", "os", path=[tree, tmp_path / "nowhere"])
    assert rc == 1 and str(tmp_path / "nowhere") in err and "Traceback" not in err


def test_debug_shows_the_traceback(element_info, tree):
    rc, _, err = element_info("-n", "--debug", "nosuch", "os", path=[tree])
    assert rc == 1 and "Traceback" in err and "ElementNotFound" in err


def test_real_process_exit_status_and_clean_stderr(tree, repo_root, subprocess_env):
    cmd = [sys.executable, str(repo_root / "bin" / "element-info")]
    env = dict(subprocess_env, ELEMENTS_PATH=str(tree))
    ok = subprocess.run(cmd + ["-n", "app", "impl", "os"], env=env, capture_output=True,
                        text=True)
    assert (ok.returncode, ok.stdout) == (0, "impl lib app os\n")
    bad = subprocess.run(cmd + ["debain"], env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith("error: element 'debain' not found")
    assert "Traceback" not in bad.stderr


# -- what disk-image-create adds ------------------------------------------------------------

VM_TREE = dict(TREE, base={}, vm={"deps": ["block-device"]},
               **{"block-device-mbr": {"provides": ["block-device"]},
                  "block-device-efi": {"provides": ["block-device"]}})


@pytest.fixture
def vm_tree(make_elements):
    return make_elements(VM_TREE)


def test_base_and_the_default_block_device_are_added_as_disk_image_create_does(
        element_info, vm_tree):
    rc, out, err = element_info("vm", "os", path=[vm_tree], env={"ARCH": "amd64"})
    assert (rc, err) == (0, "")
    assert set(out.split()) == {"base", "block-device-mbr", "vm", "os"}
    rc, out, _ = element_info("-n", "vm", "os", path=[vm_tree], env={"ARCH": "amd64"})
    assert set(out.split()) == {"block-device-mbr", "vm", "os"}


@pytest.mark.parametrize("argv, env, device", [
    (["-a", "arm64"], {}, "block-device-efi"),
    ([], {"ARCH": "arm64"}, "block-device-efi"),
    (["-a", "amd64"], {"ARCH": "arm64"}, "block-device-mbr"),
    (["block-device-efi"], {"ARCH": "amd64"}, "block-device-efi"),
])
def test_the_block_device_follows_the_architecture_or_the_choice_made(element_info, vm_tree,
                                                                      argv, env, device):
    rc, out, _ = element_info("-n", *argv, "vm", "os", path=[vm_tree], env=env)
    assert rc == 0
    assert [n for n in out.split() if n.startswith("block-device-")] == [device]


def test_without_vm_no_block_device_is_added(element_info, vm_tree):
    rc, out, _ = element_info("os", path=[vm_tree])
    assert (rc, out) == (0, "base os\n")


def test_json_says_what_was_added(element_info, vm_tree):
    rc, out, _ = element_info("--json", "os", "vm", path=[vm_tree], env={"ARCH": "amd64"})
    data = json.loads(out)
    assert rc == 0
    assert data["implicit"] == ["base", "block-device-mbr"]
    assert sorted(data["requested"]) == ["base", "block-device-mbr", "os", "vm"]
    assert "block-device-mbr" in data["order"]


def test_env_exports_the_set_disk_image_create_builds(element_info, vm_tree):
    _, out, _ = element_info("--env", "vm", "os", path=[vm_tree], env={"ARCH": "amd64"})
    _, names, _ = _eval_in_bash(out).split("--\n")
    assert set(names.split()) == {"base", "block-device-mbr", "vm", "os"}


def test_the_readmes_graph_example_works_with_the_shipped_elements(repo_root, subprocess_env):
    # README.md: element-info --graph vm debian | dot -Tsvg
    env = {k: v for k, v in subprocess_env.items() if k != "ELEMENTS_PATH"}
    proc = subprocess.run([sys.executable, str(repo_root / "bin" / "element-info"), "--graph",
                           "vm", "debian"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert '"block-device-mbr"' in proc.stdout and '"base" [style=bold];' in proc.stdout
