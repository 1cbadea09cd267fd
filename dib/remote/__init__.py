"""The remote layer cache: layers shared between machines through an OCI registry.

Imported only when ``--remote-cache`` / ``DIB_REMOTE_CACHE`` is set (a build without it never
loads any of this). :mod:`dib.remote.url` parses the setting, :mod:`dib.remote.layer` turns an
overlay upper directory into an OCI layer tar and back, :mod:`dib.remote.oci` writes and reads
the manifest, :mod:`dib.remote.client` talks to the registry (skopeo, through the command
gateway) and :mod:`dib.remote.cache` is what a build uses: pull on a local miss, push after a
step. docs/caching.md describes the format and the failure behaviour.
"""
