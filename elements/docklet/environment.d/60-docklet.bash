# Defaults of the docklet element (README.rst describes every variable). Only defaults here:
# the element's hooks validate the values (docklet-lib/docklet_image, "check").

# the source: a git URL, a local git work tree, or a plain directory on the build host
export DOCKLET_REPO=${DOCKLET_REPO:-${DIB_REPOLOCATION_docklet:-https://github.com/unias/docklet.git}}
export DOCKLET_REF=${DOCKLET_REF:-${DIB_REPOREF_docklet:-master}}
export DOCKLET_HOME=${DOCKLET_HOME:-/home/docklet}
export DOCKLET_FS_PREFIX=${DOCKLET_FS_PREFIX:-/opt/docklet}

# single (etcd + master + worker), master (etcd + master), worker
export DOCKLET_MODE=${DOCKLET_MODE:-single}
# auto: found at every boot (the default route's interface and its IPv4 address)
export DOCKLET_NETWORK_DEVICE=${DOCKLET_NETWORK_DEVICE:-auto}
export DOCKLET_PUBLIC_IP=${DOCKLET_PUBLIC_IP:-auto}
export DOCKLET_PORTAL_URL=${DOCKLET_PORTAL_URL:-auto}
# empty: 127.0.0.1:2379 (single, master); required (<master-ip>:2379) for worker
export DOCKLET_ETCD=${DOCKLET_ETCD:-}
# empty: 127.0.0.1 (single), 0.0.0.0 (master)
export DOCKLET_ETCD_LISTEN=${DOCKLET_ETCD_LISTEN:-}
# empty: a random key made at first boot (single); required for master and worker
export DOCKLET_AUTH_KEY=${DOCKLET_AUTH_KEY:-}
export DOCKLET_CLUSTER_NAME=${DOCKLET_CLUSTER_NAME:-docklet-vc}
export DOCKLET_CLUSTER_NET=${DOCKLET_CLUSTER_NET:-172.16.0.1/16}
export DOCKLET_BATCH_NET=${DOCKLET_BATCH_NET:-10.16.0.0/16}

# ports
export DOCKLET_NGINX_PORT=${DOCKLET_NGINX_PORT:-8080}
export DOCKLET_WEB_PORT=${DOCKLET_WEB_PORT:-8888}
export DOCKLET_MASTER_PORT=${DOCKLET_MASTER_PORT:-9000}
export DOCKLET_WORKER_PORT=${DOCKLET_WORKER_PORT:-9001}
export DOCKLET_PROXY_PORT=${DOCKLET_PROXY_PORT:-8000}
export DOCKLET_PROXY_API_PORT=${DOCKLET_PROXY_API_PORT:-8001}

# storage: file (a sparse file on /dev/loop0, DISKPOOL_SIZE MB) or disk (DOCKLET_DISK)
export DOCKLET_STORAGE=${DOCKLET_STORAGE:-file}
export DOCKLET_DISK=${DOCKLET_DISK:-}
export DOCKLET_DISKPOOL_SIZE=${DOCKLET_DISKPOOL_SIZE:-10000}
export DOCKLET_DISTRIBUTED_GATEWAY=${DOCKLET_DISTRIBUTED_GATEWAY:-False}
export DOCKLET_BATCH_ON=${DOCKLET_BATCH_ON:-True}
# more KEY=value settings for docklet.conf, separated by spaces
export DOCKLET_EXTRA_CONF=${DOCKLET_EXTRA_CONF:-}
# the shared FS_PREFIX/global of a multi-host system: nfs:<server>:/<export> or
# glusterfs:<server>:<volume>
export DOCKLET_GLOBAL_FS=${DOCKLET_GLOBAL_FS:-}

# the containers' root filesystem: debootstrap (built from the image's mirror), tarball,
# dir or none
export DOCKLET_BASEFS=${DOCKLET_BASEFS:-debootstrap}
export DOCKLET_BASEFS_DISTRO=${DOCKLET_BASEFS_DISTRO:-}
export DOCKLET_BASEFS_RELEASE=${DOCKLET_BASEFS_RELEASE:-}
export DOCKLET_BASEFS_MIRROR=${DOCKLET_BASEFS_MIRROR:-}
export DOCKLET_BASEFS_PACKAGES=${DOCKLET_BASEFS_PACKAGES:-}
export DOCKLET_BASEFS_TARBALL=${DOCKLET_BASEFS_TARBALL:-}
export DOCKLET_BASEFS_DIR=${DOCKLET_BASEFS_DIR:-}
export DOCKLET_BASEFS_DNS=${DOCKLET_BASEFS_DNS:-}
export DOCKLET_BASEFS_JUPYTER=${DOCKLET_BASEFS_JUPYTER:-0}

# compatibility with current kernels and distributions
export DOCKLET_UNIONFS=${DOCKLET_UNIONFS:-overlay}
export DOCKLET_CGROUP=${DOCKLET_CGROUP:-v1}
if [ -z "${DOCKLET_PY_PINS+set}" ]; then
    DOCKLET_PY_PINS="itsdangerous==2.0.1 Flask-SQLAlchemy==2.5.1 Flask-WTF==0.15.1"
    case "${DISTRO_NAME:-}:${DIB_RELEASE:-}" in
        ubuntu:noble) DOCKLET_PY_PINS="$DOCKLET_PY_PINS Flask==2.2.5 Werkzeug==2.2.3" ;;
    esac
fi
export DOCKLET_PY_PINS
export DOCKLET_PIP_WHEELHOUSE=${DOCKLET_PIP_WHEELHOUSE:-}
export DOCKLET_PIP_INDEX_URL=${DOCKLET_PIP_INDEX_URL:-}
export DOCKLET_PYLIB=${DOCKLET_PYLIB:-/usr/local/lib/docklet/pylib}
export DOCKLET_STRICT_PATCH=${DOCKLET_STRICT_PATCH:-1}
export DOCKLET_MAIL=${DOCKLET_MAIL:-none}
export DOCKLET_START_TIMEOUT=${DOCKLET_START_TIMEOUT:-480}
export DOCKLET_ALLOW_UNSUPPORTED_RELEASE=${DOCKLET_ALLOW_UNSUPPORTED_RELEASE:-0}

# derived, for package-installs.yaml
if [ -n "$DOCKLET_PY_PINS" ]; then
    export DOCKLET_PIP_NEEDED=1
else
    export DOCKLET_PIP_NEEDED=0
fi
case "$DOCKLET_GLOBAL_FS" in
    nfs:*) export DOCKLET_GLOBAL_FS_TYPE=nfs ;;
    glusterfs:*) export DOCKLET_GLOBAL_FS_TYPE=glusterfs ;;
    *) export DOCKLET_GLOBAL_FS_TYPE=none ;;
esac
