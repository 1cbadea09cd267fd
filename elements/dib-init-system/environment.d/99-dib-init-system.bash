# the OS element sets DIB_INIT_SYSTEM; an unknown value stops the build here
if [ -z "${DIB_INIT_SYSTEM:-}" ]; then
    echo "DIB_INIT_SYSTEM is not set (the operating-system element sets it); cannot continue" >&2
    return 1
fi
case $DIB_INIT_SYSTEM in
    systemd|upstart|openrc|sysv) ;;
    *)
        echo "Unrecognised init system DIB_INIT_SYSTEM=$DIB_INIT_SYSTEM (systemd, upstart, openrc, sysv)" >&2
        return 1 ;;
esac
