export DISTRO_NAME=debian
export DIB_RELEASE=${DIB_RELEASE:-bookworm}
export DIB_INIT_SYSTEM=systemd
export EFI_BOOT_DIR="EFI/debian"
export DIB_DEBIAN_COMPONENTS=${DIB_DEBIAN_COMPONENTS:-main}
# default: the architecture's kernel (linux-image-amd64, ...); cloud: Debian's cloud kernel
export DIB_DEBIAN_KERNEL_FLAVOUR=${DIB_DEBIAN_KERNEL_FLAVOUR:-default}
# what the bootstrap installs besides minbase (part of its cache key)
export DIB_DEBOOTSTRAP_INCLUDE="systemd-sysv,busybox,sudo,gnupg${DIB_DEBOOTSTRAP_INCLUDE:+,$DIB_DEBOOTSTRAP_INCLUDE}"
# Debian has no Python 2 any more; diskimage-builder's dib-python element would otherwise
# pick python2 for Debian (read by package-installs' dib_python_version too)
export DIB_PYTHON_VERSION=${DIB_PYTHON_VERSION:-3}
