# Sourced after 10-t-probe-where in the same shell: it sees the unexported variable.
# shellcheck shell=bash
export T_PROBE_ENV_CHAIN="${T_PROBE_ENV_WHERE}+${T_PROBE_ENV_LOCAL}"
