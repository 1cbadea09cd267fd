#!/bin/bash
# Generate any missing ssh host key at boot (the image ships none).
set -eu
for key in rsa ecdsa ed25519; do
    file=/etc/ssh/ssh_host_${key}_key
    if [ ! -f "$file" ]; then
        ssh-keygen -q -f "$file" -N '' -t "$key"
    fi
done
