"""``python -m dib`` runs disk-image-create."""
from dib.cli import disk_image_create

raise SystemExit(disk_image_create())
