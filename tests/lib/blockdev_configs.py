"""Block-device configs shared by the unit and root tests of dib.blockdev."""

#: ESP (vfat, /boot/efi) + BIOS boot + root, in tree notation
EFI_TREE = """
- local_loop:
    name: image0
- partitioning:
    base: image0
    label: gpt
    partitions:
      - name: ESP
        type: 'EF00'
        size: 64MiB
        mkfs:
          type: vfat
          mount:
            mount_point: /boot/efi
            fstab:
              options: "defaults"
              fsck-passno: 2
      - name: BSP
        type: 'EF02'
        size: 8MiB
      - name: root
        type: '8300'
        size: 100%
        mkfs:
          name: mkfs_root
          mount:
            mount_point: /
            fstab:
              options: "defaults"
              fsck-passno: 1
"""
