"""How big a tmpfs a build's work directory gets: pure arithmetic on fake /proc text."""
from __future__ import annotations

from pathlib import Path

from dib.workdir import GIB, build_tmpfs_mounts, meminfo_bytes, plan_tmpfs, promised_bytes

MEMINFO = """MemTotal:       24576000 kB
MemFree:         1234567 kB
MemAvailable:   20000000 kB
Shmem:            123456 kB
HugePages_Total:       0
"""

# id parent maj:min root mountpoint options [optional fields] - fstype source superoptions
MOUNTINFO = r"""22 1 0:21 / /proc rw,nosuid shared:5 - proc proc rw
40 1 0:30 / /tmp/dib_build.aaaa1111/w rw,relatime shared:20 - tmpfs tmpfs rw,size=6291456k
41 40 0:31 / /tmp/dib_build.aaaa1111/w/mnt/proc rw - proc proc rw
42 40 0:32 / /tmp/dib_build.aaaa1111/w/mnt/tmp rw - tmpfs tmpfs rw
43 1 0:33 / /var/tmp/x\040y/dib_build.bbbb2222/w rw - tmpfs tmpfs rw,size=1048576k
44 1 0:34 / /tmp/dib_build.cccc3333/w rw - ext4 /dev/sda1 rw
45 1 0:35 / /tmp/dib_build.ours0000/w rw - tmpfs tmpfs rw,size=1048576k
46 1 0:36 / /tmp/not_a_build/w rw - tmpfs tmpfs rw
"""


def test_meminfo_fields_in_bytes():
    assert meminfo_bytes(MEMINFO, "MemAvailable") == 20000000 * 1024
    assert meminfo_bytes(MEMINFO, "MemTotal") == 24576000 * 1024
    assert meminfo_bytes(MEMINFO, "HugePages_Total") == 0
    assert meminfo_bytes("MemTotal: 1 kB\n", "MemAvailable") == 0


def test_other_builds_are_their_work_dir_tmpfs_mounts_only():
    found = build_tmpfs_mounts(MOUNTINFO, own=Path("/tmp/dib_build.ours0000"))
    assert found == [Path("/tmp/dib_build.aaaa1111/w"),
                     Path("/var/tmp/x y/dib_build.bbbb2222/w")]
    assert Path("/tmp/dib_build.ours0000/w") in build_tmpfs_mounts(MOUNTINFO)


def test_promised_is_what_the_others_could_still_fill():
    free = {Path("/a"): 3 * GIB, Path("/b"): GIB // 2}

    def fake_free(p: Path) -> int:
        if p not in free:
            raise FileNotFoundError(p)          # unmounted since mountinfo was read
        return free[p]

    assert promised_bytes([Path("/a"), Path("/b"), Path("/gone")], fake_free) == \
        free[Path("/a")] + free[Path("/b")]


def test_alone_the_build_gets_half_of_what_is_available():
    plan = plan_tmpfs(available=20 * GIB, promised=0, others=0,
                      min_bytes=2 * GIB)
    assert plan.size == 10 * GIB
    assert plan.describe() == ("work directory: tmpfs of 10.0 GiB (MemAvailable 20.0 GiB, "
                               "0.0 GiB promised to 0 other builds)")


def test_memory_promised_to_other_builds_is_not_promised_again():
    alone = plan_tmpfs(20 * GIB, 0, 0, 2 * GIB)
    shared = plan_tmpfs(20 * GIB, 8 * GIB, 1, 2 * GIB)
    assert shared.size == (20 - 8) * GIB // 2
    assert shared.size < alone.size
    # two builds' promises never exceed what was available when each started
    assert shared.promised + shared.size <= shared.available
    assert "8.0 GiB promised to 1 other build)" in shared.describe()


def test_short_of_memory_the_build_goes_to_disk_and_says_why():
    plan = plan_tmpfs(available=6 * GIB, promised=3 * GIB + GIB // 2,
                      others=2, min_bytes=2 * GIB)
    assert plan.size == 0
    assert plan.describe() == (
        "work directory on disk: only 1.2 GiB of memory to spare (half of MemAvailable "
        "6.0 GiB less 3.5 GiB promised to 2 other builds; needs 2 GiB, --min-tmpfs)")


def test_promised_beyond_available_is_no_memory_not_negative():
    plan = plan_tmpfs(available=4 * GIB, promised=100 * GIB, others=1,
                      min_bytes=GIB)
    assert (plan.size, plan.candidate) == (0, 0)


def test_sizes_are_whole_mib():
    plan = plan_tmpfs(available=5 * GIB + 12345, promised=0, others=0,
                      min_bytes=GIB)
    assert plan.size % (1 << 20) == 0 and plan.size > 0
