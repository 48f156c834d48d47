# What the broker set-up scripts share; sourced by them, never run. Each script sets HOST,
# PORT and STARTUP_TIMEOUT first.

# Says which script failed and why, then exits 1.
fail() {
    echo "scripts/$(basename "$0"): $*" >&2
    exit 1
}

# Whether something accepts connections on $HOST, port $1 ($PORT when not given).
answers() {
    (exec 3<>"/dev/tcp/$HOST/${1:-$PORT}") 2>/dev/null
}

# Waits until $HOST:$PORT answers, failing when process $1 (named $2, logging to $3) exits
# or $STARTUP_TIMEOUT seconds pass.
wait_until_started() {
    local pid=$1 name=$2 log=$3
    local deadline=$((SECONDS + STARTUP_TIMEOUT))
    until answers; do
        kill -0 "$pid" 2>/dev/null || fail "$name exited while starting; see $log"
        [ "$SECONDS" -lt "$deadline" ] || fail "$name did not answer on $HOST:$PORT within ${STARTUP_TIMEOUT}s; see $log"
        sleep 0.2
    done
}
