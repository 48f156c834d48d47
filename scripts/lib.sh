# What the broker set-up scripts share; sourced by them, never run. Each script sets HOST,
# PORT and STARTUP_TIMEOUT first.

# Says which script failed and why, then exits 1.
fail() {
    echo "scripts/$(basename "$0"): $*" >&2
    exit 1
}

# Runs a command as root: directly when root already, through sudo otherwise.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -E "$@"
    else
        fail "need root (or sudo) to run: $*"
    fi
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

# Installs the PyPI requirement $2 (a pinned `name==version`) into a new virtualenv $1,
# replacing whatever was there; fails, saying why, when it cannot.
pip_install_into() {
    local venv=$1 requirement=$2
    command -v python3 >/dev/null 2>&1 || fail "python3 is needed to install $requirement"
    echo "scripts/$(basename "$0"): installing $requirement into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv" || fail "python3 -m venv $venv failed"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$requirement" ||
        fail "pip install $requirement failed"
}
