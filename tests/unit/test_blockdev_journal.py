"""Reading an ext journal's layout and state (dib.blockdev.journal), without a filesystem."""
from __future__ import annotations

from dib.blockdev import journal

STAT = """Inode: 8   Type: regular    Mode:  0600   Flags: 0x80000
Size of extra inode fields: 32
EXTENTS:
(ETB0):1234, (0-8191):131072-139263, (8192):150000, (8193-8199):150001-150007
"""

CLEAN = {"Filesystem features": "has_journal ext_attr extent 64bit metadata_csum",
         "Block size": "4096", "Journal inode": "8", "Journal start": "0"}


def test_extents_in_logical_order_without_index_blocks() -> None:
    assert journal.journal_extents(STAT) == [(0, 131072, 8192), (8192, 150000, 1),
                                             (8193, 150001, 7)]
    assert journal.journal_extents("Inode: 8\n") == []


def test_superblock_fields_split_at_the_first_colon() -> None:
    text = "Filesystem volume name:   cloudimg-rootfs\nJournal start:            0\nnoise\n"
    assert journal.superblock_fields(text) == {"Filesystem volume name": "cloudimg-rootfs",
                                               "Journal start": "0"}


def test_an_empty_journal_loses_every_block_but_its_superblock() -> None:
    ranges = journal.stale_ranges(CLEAN, journal.journal_extents(STAT))
    assert ranges == [(131073 * 4096, 8191 * 4096), (150000 * 4096, 4096),
                      (150001 * 4096, 7 * 4096)]


def test_a_journal_not_known_to_be_empty_is_left_alone() -> None:
    extents = journal.journal_extents(STAT)
    for change in ({"Journal start": "1"}, {"Journal inode": "12"}, {"Block size": "?"},
                   {"Filesystem features": CLEAN["Filesystem features"] + " needs_recovery"},
                   {"Filesystem features": "ext_attr extent"}):
        assert journal.stale_ranges({**CLEAN, **change}, extents) is None, change


def test_a_journal_that_cannot_be_read_is_left_alone(tmp_path) -> None:
    from dib import cmd

    def runner(argv, **kwargs):
        calls.append(argv)
        return cmd.Result(tuple(argv), 1, "", "dumpe2fs: Bad magic number in super-block")

    calls: list = []
    with cmd.use_runner(runner):
        assert journal.punch_stale_journal(tmp_path / "disk.raw", 1 << 20) == 0
    assert [argv[0] for argv in calls] == ["dumpe2fs"]  # nothing punched
