"""Element discovery: the search path, precedence, and what an element directory yields."""
from __future__ import annotations

import logging
import os

import pytest

from dib import element
from dib.element import discover, search_path
from dib.errors import DibError, InvalidElementDir

# -- the search path -----------------------------------------------------------------------

def test_earlier_entry_replaces_later_one_whole_and_warns_naming_both(make_elements, caplog):
    first = make_elements({"app": {"deps": ["x"]}}, under="first")
    second = make_elements({"app": {"deps": ["y", "z"], "provides": ["thing"]}},
                           under="second")
    with caplog.at_level(logging.WARNING, logger="dib"):
        cat = discover([first, second])
    app = cat["app"]
    assert app.path == (first / "app").resolve()
    assert app.deps == ("x",)
    assert app.provides == ()  # nothing merged from the loser
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1
    assert str((first / "app").resolve()) in warning[0]
    assert str((second / "app").resolve()) in warning[0]
    assert cat.overridden == {"app": ((second / "app").resolve(),)}


def test_three_entries_nearest_wins(make_elements):
    roots = [make_elements({"e": {"deps": [str(i)]}}, under=f"p{i}") for i in range(3)]
    assert discover(roots)["e"].deps == ("0",)
    assert discover(list(reversed(roots)))["e"].deps == ("2",)


def test_builtin_directory_comes_last_so_users_override_it(make_elements):
    builtin = make_elements({"base": {"deps": ["from-builtin"]}, "only-builtin": {}},
                            under="builtin")
    user = make_elements({"base": {"deps": ["from-user"]}}, under="user")
    paths = search_path(str(user), builtin=builtin)
    assert paths == (user, builtin)
    cat = discover(paths)
    assert cat["base"].deps == ("from-user",)
    assert "only-builtin" in cat


def test_builtin_directory_named_on_elements_path_stays_in_place(make_elements):
    """ELEMENTS_PATH=$(element-info --builtin-path):<diskimage-builder's library>: ours
    first, theirs for the rest -- the built-ins are not appended a second time."""
    builtin = make_elements({"vm": {"deps": ["ours"]}, "ours": {}}, under="builtin")
    library = make_elements({"vm": {"deps": ["theirs"]}, "only-theirs": {}}, under="library")
    paths = search_path(f"{builtin}:{library}", builtin=builtin)
    assert paths == (builtin, library)
    cat = discover(paths)
    assert cat["vm"].deps == ("ours",)
    assert "only-theirs" in cat
    assert cat.overridden["vm"] == (library / "vm",)


def test_no_elements_path_means_builtins_only(make_elements):
    builtin = make_elements({"base": {}}, under="builtin")
    assert search_path(None, builtin=builtin) == (builtin,)
    assert search_path("", builtin=builtin) == (builtin,)


def test_missing_builtin_directory_is_skipped(tmp_path, make_elements):
    user = make_elements({"a": {}}, under="user")
    assert search_path(str(user), builtin=tmp_path / "absent") == (user,)
    assert search_path(None, builtin=tmp_path / "absent") == ()
    assert discover(()).elements == {}


def test_entry_that_is_not_a_directory_is_an_error_naming_it(tmp_path, make_elements):
    good = make_elements({"a": {}})
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    for bad in (not_a_dir, tmp_path / "missing"):
        with pytest.raises(InvalidElementDir) as exc:
            discover([good, bad])  # an error even though every element is found in `good`
        assert str(bad) in str(exc.value)
        assert isinstance(exc.value, DibError) and exc.value.exit_code == 1
        assert exc.value.hint and "ELEMENTS_PATH" in exc.value.hint


@pytest.mark.parametrize("value", ["{a}::{b}", "{a}:", ":{a}"])
def test_empty_elements_path_component_is_an_error(make_elements, value):
    a = make_elements({"x": {}}, under="a")
    b = make_elements({"y": {}}, under="b")
    with pytest.raises(InvalidElementDir, match="entry ''"):
        search_path(value.format(a=a, b=b), builtin=b)


# -- what counts as an element ---------------------------------------------------------------

def test_symlinked_element_is_named_after_its_real_directory(tmp_path, make_elements):
    real = make_elements({"real-name": {"deps": ["x"]}}, under="store")
    entry = tmp_path / "entry"
    entry.mkdir()
    os.symlink(real / "real-name", entry / "alias")
    cat = discover([entry])
    assert cat.names() == ("real-name",)
    assert cat["real-name"].path == (real / "real-name").resolve()


def test_same_directory_twice_on_the_path_does_not_warn(make_elements, caplog):
    root = make_elements({"a": {}})
    with caplog.at_level(logging.WARNING, logger="dib"):
        cat = discover([root, root])
    assert cat.names() == ("a",)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert cat.overridden == {}


def test_files_hidden_dirs_and_pycache_are_not_elements(make_elements):
    root = make_elements({"real": {}, "__pycache__": {}, ".git": {}})
    (root / "__init__.py").write_text("")
    (root / "README.rst").write_text("not an element\n")
    assert discover([root]).names() == ("real",)


def test_element_deps_comments_blanks_whitespace_and_repeats(catalogue):
    cat = catalogue({"a": {"deps_text": "# a comment\n\n  b  \n\t\nc\n#d\nb\n"},
                     "b": {"provides_text": "\n# why\nthing\n"}})
    assert cat["a"].deps == ("b", "c")
    assert cat["b"].provides == ("thing",)
    assert cat["b"].deps == ()


def test_providers_of_lists_every_provider_sorted(catalogue):
    cat = catalogue({"z-os": {"provides": ["operating-system"]},
                     "a-os": {"provides": ["operating-system", "init"]}, "other": {}})
    assert cat.providers_of("operating-system") == ("a-os", "z-os")
    assert cat.providers_of("init") == ("a-os",)
    assert cat.providers_of("nothing") == ()


# -- README summary and hooks --------------------------------------------------------------

@pytest.mark.parametrize("readme, summary", [
    ("==\nvm\n==\nSets up a partitioned disk.\nMore text.\n", "Sets up a partitioned disk."),
    ("Debian Minimal\n--------------\n\n.. note:: x\n\n  Builds Debian.\n", "Builds Debian."),
    ("Just one line\n", "Just one line"),
    ("=====\nTitle\n=====\n", ""),
    # a sentence over several lines is joined, not cut at the line's end
    ("==\nvm\n==\nSets up a partitioned disk (rather than\none filesystem). Then more.\n",
     "Sets up a partitioned disk (rather than one filesystem)."),
    # the paragraph ends at a blank line or a field list
    ("t\n=\n\nNo stop here\n\nNext paragraph.\n", "No stop here"),
    ("t\n=\nShort\n:Default: x\n", "Short"),
    # abbreviations, versions and lower-case continuations do not end the sentence
    ("Uses e.g. grub 2.06 and etc. files. Second.\n", "Uses e.g. grub 2.06 and etc. files."),
    ("Ends with a path /etc/x. then lower case. Done.\n",
     "Ends with a path /etc/x. then lower case."),
    # inline markup is reduced to its text
    ("Sets ``DIB_X`` via :ref:`the docs <x>`, :envvar:`Y` and `Docklet <https://d>`_.\n",
     "Sets DIB_X via the docs, Y and Docklet."),
    ("A `ref`_ and an `anon`__, **bold** and *emph*, not a*b*c.\n",
     "A ref and an anon, bold and emph, not a*b*c."),
    ("# Title\n\nMarkdown `code` here.\n", "Markdown code here."),
    ("t\n=\nBoots into a thing::\n\n    literal\n", "Boots into a thing:"),
])
def test_summary_is_the_first_sentence_of_the_readme(catalogue, readme, summary):
    assert catalogue({"e": {"readme": readme}})["e"].summary == summary


def test_a_summary_with_no_sentence_end_in_sight_is_cut_at_a_word():
    text = " ".join(f"word{i}," for i in range(100))
    summary = element.summarize(["t", "=", text], limit=60)
    assert len(summary) <= 60 and summary.endswith("...")
    assert text.startswith(summary[:-3] + ",")  # whole words, the trailing comma dropped


def test_every_shipped_elements_summary_is_one_whole_sentence(repo_root):
    cat = element.discover([repo_root / "elements"])
    for e in cat.elements.values():
        assert e.summary, e.name
        assert e.summary[-1] in ".:!?)", (e.name, e.summary)
        assert not any(m in e.summary for m in ("``", ":ref:", "`_", "::")), (e.name, e.summary)


def test_summary_without_readme_is_empty(catalogue):
    assert catalogue({"e": {}})["e"].summary == ""


def test_hooks_are_executable_valid_names_in_run_parts_order(catalogue, tmp_path):
    cat = catalogue({"e": {"hooks": {"install.d": ["50-b", "10-z", "9-a", "bad.name"],
                                     "root.d": ["01-x"]}}})
    path = cat["e"].path
    (path / "install.d" / "60-not-executable").write_text("#!/bin/bash\n")
    (path / "environment.d").mkdir()
    (path / "environment.d" / "10-vars.bash").write_text("export X=1\n")
    e = element.load_element(path)
    assert e.hooks == {"install.d": ("9-a", "10-z", "50-b"), "root.d": ("01-x",)}
    assert [p.name for p in e.environment_files()] == ["10-vars.bash"]
