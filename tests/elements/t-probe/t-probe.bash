# Sourced by t-probe's hooks (and other test elements); see README.rst.
# shellcheck shell=bash

t_probe_dir() {
    if grep -qs '^ID=fake-os$' /etc/os-release; then
        echo /t-probe
    else
        echo "$TMP_MOUNT_PATH/t-probe"
    fi
}

t_probe() {
    local phase script dir os_id in_target in_target_hook array hooks_dir extra v
    phase=$(basename "$(dirname "$0")")
    script=$(basename "$0")
    dir=$(t_probe_dir)
    mkdir -p "$dir/$phase"
    echo "$phase/$script" >> "$dir/order"

    for v in $(compgen -e); do
        printf '%s=%s\0' "$v" "${!v}"
    done > "$dir/$phase/$script.env"

    os_id=$(. /etc/os-release 2>/dev/null && echo "${ID:-none}" || echo none)
    if [ ! -d /tmp/in_target.d ]; then
        in_target=absent
    elif touch /tmp/in_target.d/.t-probe-write 2>/dev/null; then
        in_target=rw
        rm -f /tmp/in_target.d/.t-probe-write
    else
        in_target=ro
    fi
    in_target_hook=no
    [ -x "/tmp/in_target.d/$phase/$script" ] && in_target_hook=yes
    array=none
    if declare -F get_image_element_array > /dev/null; then
        declare -A elements
        eval "elements=( $(get_image_element_array) )"
        array=${elements[t-probe]:-missing}
    fi
    hooks_dir=no
    [ -d "${TMP_HOOKS_PATH:-/nonexistent}/$phase" ] && hooks_dir=yes
    extra=$(cat /tmp/in_target.d/t-probe-extra 2> /dev/null || echo none)
    cat > "$dir/$phase/$script.facts" <<FACTS
root=$(stat -c %d:%i /)
os=$os_id
in_target=$in_target
in_target_hook=$in_target_hook
array=$array
hooks_dir=$hooks_dir
extra_data=$extra
FACTS
}
