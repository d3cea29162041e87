# Sourced by scripts/test.sh: `apt_get ARGS...` is apt-get that waits, at most APT_LOCK_WAIT seconds (default 600),
# for another apt/dpkg to let go of its locks instead of failing: on a fresh Workbench instance unattended upgrades
# hold them for minutes after boot. The dpkg lock is waited for by apt's own option (DPkg::Lock::Timeout); apt-get
# update's lists lock has no such option, so that one is retried every APT_LOCK_POLL seconds (default 5).
apt_get() {
  local sudo_="" wait=${APT_LOCK_WAIT:-600} deadline out
  deadline=$((SECONDS + wait))
  [ "$(id -u)" -eq 0 ] || sudo_="sudo"
  while ! out=$($sudo_ env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout="$wait" "$@" 2>&1); do
    if [[ "$out" == *"Could not get lock"* ]] && [ "$SECONDS" -lt "$deadline" ]; then
      echo "apt-get $*: another apt/dpkg holds its lock; waiting (at most ${wait}s in all)"
      sleep "${APT_LOCK_POLL:-5}"
      continue
    fi
    echo "$out" >&2
    return 1
  done
  [ -z "$out" ] || echo "$out"
}
