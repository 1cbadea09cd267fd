export DISTRO_NAME=${DISTRO_NAME:-ubuntu}
export DIB_RELEASE=${DIB_RELEASE:-noble}
export DIB_DEBIAN_COMPONENTS=${DIB_DEBIAN_COMPONENTS:-main,universe}
export DIB_UBUNTU_MIRROR_DISTS=${DIB_UBUNTU_MIRROR_DISTS:-updates,security,backports}
export EFI_BOOT_DIR="EFI/ubuntu"
export DIB_INIT_SYSTEM=systemd
# Ubuntu's archive key: from the build host's ubuntu-keyring package (root.d/07 checks it)
export DIB_UBUNTU_KEYRING=${DIB_UBUNTU_KEYRING:-/usr/share/keyrings/ubuntu-archive-keyring.gpg}
export DIB_APT_KEYRING=${DIB_APT_KEYRING:-$DIB_UBUNTU_KEYRING}
