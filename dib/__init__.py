"""dib: compose bootable disk images from diskimage-builder style elements."""

__version__ = "0.1.0"
