# shellcheck shell=bash
# tests/debian/lib.sh: boot the cached Debian 12 root file system
# (tests/debian/rootfs) as systemd containers, run commands in them, and join
# them by private network links. Source it from bash, as root:
#
#   ROOTFS=$(tests/debian/rootfs)
#   . tests/debian/lib.sh
#   container_preflight || exit 0      # prints "SKIP: why" when this machine cannot boot containers
#   c=$(container_boot "$ROOTFS" --bind-ro="$PWD/target/debian:/mnt/debs")
#   container_sh "$c" 'dpkg -i /mnt/debs/*.deb'     # container_sh: the glob is expanded inside
#   container_exec "$c" systemctl is-active chappe-relay.socket
#   container_stop "$c"
#
# container_preflight
#     Checks root, namespaces, overlayfs and cgroups; installs systemd-container
#     (systemd-nspawn) and iproute2 when missing; stops what a killed earlier run
#     left behind. Prints "SKIP: <why>" and returns 1 when containers cannot boot here.
# container_boot ROOTFS [NSPAWN-OPTION...]
#     Boots ROOTFS with `systemd-nspawn --boot` on an overlay of its own (the
#     tree stays pristine; any number of containers boot from it at once), with
#     a private network (loopback only) unless an option is --network-* or
#     --private-network. Waits until the container's systemd reports `running`
#     or `degraded` (then lists the failed units on stderr), at most
#     $CHAPPE_BOOT_TIMEOUT seconds (60). Prints the container's NAME, which is
#     also its hostname unless --hostname= is given. Options are systemd-nspawn's:
#     --bind-ro=HOST:PATH, --hostname=, --setenv=, --network-namespace-path=...;
#     words after them go to the container's systemd (systemd.wants=UNIT).
#     Returns 1 (after printing the console log and hints) when it cannot boot.
# container_exec NAME CMD [ARG...]
#     Runs CMD in all the container's namespaces (nsenter) with a clean
#     environment (PATH, HOME=/root, LANG=C.UTF-8); stdin, stdout, stderr and
#     the exit status pass through. CMD runs outside the container's cgroups:
#     for a process under its systemd, run `systemd-run --wait --pipe ...` inside.
# container_sh NAME SCRIPT
#     container_exec NAME sh -ec SCRIPT.
# container_root NAME     the container's root directory on the host (its writable overlay)
# container_leader NAME   the host PID of the container's PID 1
# container_log NAME      its console log: nspawn's lines and the boot messages
# container_stop NAME [SECONDS]
#     Powers the container off cleanly (nspawn's SIGTERM: as `machinectl
#     poweroff`), kills it after SECONDS (30) and returns 1 if it had to;
#     unmounts and removes its overlay (CHAPPE_KEEP_CONTAINERS=1 keeps it).
# netns_link A ADDR_A B ADDR_B
#     Network namespaces A and B (made when missing, loopback up), joined by a
#     veth pair: in A the link is named v-B and has ADDR_A, in B v-A with
#     ADDR_B. An ADDR is CIDR, IPv4 or IPv6, or several joined by commas.
# netns_path A            the path for `--network-namespace-path=`, to boot a container in A
# container_cleanup
#     Stops every container and deletes every namespace made by this shell.
#     lib.sh runs it on EXIT (INT and TERM exit); a script that sets its own
#     EXIT trap calls it from there.
#
# A NAME from container_boot is valid in this shell and its subshells, and in
# other shells on the machine while the container runs.
#
# How it boots where PID 1 is not systemd (the CI machines: no machined, no
# system bus, hybrid cgroups with cgroup2 on /sys/fs/cgroup/unified):
# systemd-nspawn runs with --register=no --keep-unit, started in a cgroup of
# its own made in the name=systemd and cgroup2 hierarchies (nspawn makes its
# payload/ and supervisor/ cgroups beside itself, which two containers in one
# cgroup would share), and with SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 so that the
# container sees a pure cgroup2 tree, as a Debian 12 host does. The host binds
# every controller to its v1 hierarchies, so inside a container cgroup limits
# (MemoryMax=, TasksMax=, CPUQuota=) are accepted but not enforced. Where PID 1
# is systemd, nspawn runs in a delegated scope (systemd-run --scope) instead.
# SYSTEMD_NSPAWN_* variables set by the caller pass through.

CT_TMP=${TMPDIR:-/tmp}
CT_RUN=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
CT_STATE=$CT_TMP/chappe-ct-$CT_RUN
mkdir -m 700 "$CT_STATE" && echo $$ >"$CT_STATE/owner" || return 1
trap container_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ct_log() { printf 'container: %s\n' "$*" >&2; }

# ct_need CMD PACKAGE: installs PACKAGE when CMD is missing.
ct_need() {
  command -v "$1" >/dev/null && return 0
  ct_log "installing $2 (for $1)"
  { DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$2" ||
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$2"; }
  } >&2
  command -v "$1" >/dev/null
}

ct_systemd_host() { [ "$(cat /proc/1/comm)" = systemd ] && [ -d /run/systemd/system ]; }

# The cgroup hierarchies nspawn needs a cgroup of its own in, one a line.
ct_cgroup_roots() {
  if [ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" = cgroup2fs ]; then
    echo /sys/fs/cgroup
    return
  fi
  if [ "$(stat -fc %T /sys/fs/cgroup/systemd 2>/dev/null)" = cgroupfs ]; then echo /sys/fs/cgroup/systemd; fi
  if [ "$(stat -fc %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ]; then echo /sys/fs/cgroup/unified; fi
}

# ct_dir NAME: the container's state directory (its run is part of its name).
ct_dir() {
  local run=${1#chappe-}
  echo "$CT_TMP/chappe-ct-${run%-*}/$1"
}

# ct_alive DIR: its systemd-nspawn still runs (a zombie does not count).
ct_alive() {
  local pid stat
  pid=$(cat "$1/pid" 2>/dev/null) && [ -n "$pid" ] || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

container_preflight() {
  local why='' ns
  for ns in mnt pid net uts ipc cgroup; do
    [ -e "/proc/self/ns/$ns" ] || why="the kernel has no $ns namespaces"
  done
  if [ "$(id -u)" != 0 ]; then
    why="booting containers needs root"
  elif ! ct_need systemd-nspawn systemd-container || ! ct_need ip iproute2 || ! ct_need nsenter util-linux; then
    why="could not install systemd-container, iproute2 or util-linux"
  elif ! grep -qw overlay /proc/filesystems && ! modprobe overlay 2>/dev/null; then
    why="the kernel has no overlayfs"
  elif ! ct_systemd_host && [ -z "$(ct_cgroup_roots)" ]; then
    # A v1-only host: systemd in a container needs a name=systemd or a cgroup2 hierarchy.
    ct_log "no cgroup2 or name=systemd hierarchy; mounting cgroup2 on /sys/fs/cgroup/unified"
    mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 none /sys/fs/cgroup/unified ||
      why="no cgroup2 or name=systemd hierarchy on /sys/fs/cgroup, and mounting cgroup2 failed ($(findmnt -rno FSTYPE /sys/fs/cgroup))"
  fi
  if [ -n "$why" ]; then
    echo "SKIP: $why"
    return 1
  fi
  ct_reap_stale
}

# Stops the containers and deletes the namespaces of runs whose shell is gone.
ct_reap_stale() {
  local d owner c ns
  for d in "$CT_TMP"/chappe-ct-*; do
    [ -d "$d" ] && [ "$d" != "$CT_STATE" ] || continue
    owner=$(cat "$d/owner" 2>/dev/null) || continue
    ! kill -0 "$owner" 2>/dev/null || continue
    ct_log "cleaning up what an earlier run left behind ($d)"
    for c in "$d"/chappe-*; do
      [ -d "$c" ] && container_stop "${c##*/}" 5 || true
    done
    for ns in $(cat "$d/netns" 2>/dev/null); do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf --one-file-system "$d" || true
  done
}

container_boot() {
  local rootfs=${1:?container_boot ROOTFS [NSPAWN-OPTION...]}
  shift
  if [ ! -x "$rootfs/lib/systemd/systemd" ]; then
    ct_log "$rootfs is not a root file system with systemd"
    return 1
  fi
  local n=1 name dir
  while ! mkdir "$CT_STATE/chappe-$CT_RUN-$n" 2>/dev/null; do n=$((n + 1)); done
  name=chappe-$CT_RUN-$n
  dir=$CT_STATE/$name
  mkdir "$dir/upper" "$dir/work" "$dir/root"
  if ! mount -t overlay overlay -o "lowerdir=$rootfs,upperdir=$dir/upper,workdir=$dir/work" "$dir/root"; then
    ct_log "$name: cannot mount an overlay on $rootfs"
    return 1
  fi

  local net=(--private-network) opt unified=${SYSTEMD_NSPAWN_UNIFIED_HIERARCHY:-}
  for opt; do
    case $opt in --network-* | --private-network) net=() ;; esac
  done
  if [ -z "$unified" ] && grep -qw cgroup2 /proc/mounts; then unified=1; fi
  echo "${unified:-default}" >"$dir/unified"
  (
    echo "$BASHPID" >"$dir/pid.new" && mv "$dir/pid.new" "$dir/pid"
    launch=(env ${unified:+SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=$unified} systemd-nspawn --boot
      --directory="$dir/root" --machine="$name" --register=no --keep-unit --console=read-only
      --link-journal=no --resolv-conf=off "${net[@]}" "$@")
    if ct_systemd_host; then
      exec systemd-run --scope --quiet -p Delegate=yes --unit="$name" -- "${launch[@]}"
    fi
    for root in $(ct_cgroup_roots); do
      mkdir -p "$root/chappe-tests/$name" && echo "$BASHPID" >"$root/chappe-tests/$name/cgroup.procs" || exit 125
    done
    exec "${launch[@]}"
  ) >"$dir/console.log" 2>&1 </dev/null &

  local start=$EPOCHREALTIME deadline=$((SECONDS + ${CHAPPE_BOOT_TIMEOUT:-60})) pid child state=
  while :; do
    if [ -s "$dir/pid" ] && ! ct_alive "$dir"; then
      ct_log "$name: systemd-nspawn exited while booting"
      ct_boot_failed "$name"
      return 1
    fi
    if [ ! -s "$dir/leader" ] && pid=$(cat "$dir/pid" 2>/dev/null); then
      for child in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
        if [ "$(cat "/proc/$child/comm" 2>/dev/null)" = systemd ]; then echo "$child" >"$dir/leader"; fi
      done
    fi
    if [ -s "$dir/leader" ]; then
      state=$(container_exec "$name" timeout 10 systemctl is-system-running 2>/dev/null)
      case $state in running | degraded) break ;; esac
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      ct_log "$name: not booted after ${CHAPPE_BOOT_TIMEOUT:-60} s (systemd: ${state:-not started})"
      [ -s "$dir/leader" ] && container_exec "$name" systemctl list-jobs --no-pager >&2
      ct_boot_failed "$name"
      return 1
    fi
    sleep 0.1
  done
  ct_log "$name: $state after $(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s"
  if [ "$state" = degraded ]; then
    ct_log "$name: failed units:"
    container_exec "$name" systemctl --failed --no-legend --plain >&2
  fi
  echo "$name"
}

# Explains a failed boot, then stops what is left of the container.
ct_boot_failed() {
  local dir
  dir=$(ct_dir "$1")
  {
    echo "---- console of $1 (last 40 lines; $dir/console.log)"
    tail -n 40 "$dir/console.log"
    echo "---- host: $(uname -r); PID 1: $(cat /proc/1/comm); $(systemd-nspawn --version | head -n 1)"
    echo "cgroups: $(findmnt -rno FSTYPE /sys/fs/cgroup) on /sys/fs/cgroup; hierarchies used: $(ct_cgroup_roots | paste -sd ' ' -)"
    echo "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=$(cat "$dir/unified") SYSTEMD_NSPAWN_USE_CGNS=${SYSTEMD_NSPAWN_USE_CGNS:-default}"
    echo "To see which settings boot here: tests/debian/selftest --diagnose"
    echo "----"
  } >&2
  container_stop "$1" 5 >/dev/null 2>&1 || true
}

container_leader() {
  local dir
  dir=$(ct_dir "${1:?container_leader NAME}")
  cat "$dir/leader" 2>/dev/null || { ct_log "$1: not running"; return 1; }
}

container_exec() {
  local leader
  leader=$(container_leader "${1:?container_exec NAME CMD [ARG...]}") || return 125
  shift
  nsenter --target "$leader" --all /usr/bin/env -i \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 TERM=dumb SYSTEMD_PAGER=cat "$@"
}

container_sh() { container_exec "${1:?container_sh NAME SCRIPT}" sh -ec "${2:?container_sh NAME SCRIPT}"; }

container_root() { echo "$(ct_dir "${1:?container_root NAME}")/root"; }

container_log() { echo "$(ct_dir "${1:?container_log NAME}")/console.log"; }

container_stop() {
  local name=${1:?container_stop NAME [SECONDS]} secs=${2:-30} dir pid deadline rc=0
  dir=$(ct_dir "$name")
  [ -d "$dir" ] || { ct_log "$name: no such container"; return 1; }
  pid=$(cat "$dir/pid" 2>/dev/null || true)
  if ct_alive "$dir"; then
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + secs))
    while ct_alive "$dir" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    if ct_alive "$dir"; then
      ct_log "$name: still running $secs s after poweroff; killing it"
      kill -KILL "$pid" "$(cat "$dir/leader" 2>/dev/null || echo "$pid")" 2>/dev/null || true
      while ct_alive "$dir"; do sleep 0.1; done
      rc=1
    fi
  elif [ -s "$dir/leader" ] && kill -0 "$(cat "$dir/leader")" 2>/dev/null; then
    ct_log "$name: its systemd-nspawn is gone but the container runs; killing it"
    rc=1
  fi
  ct_release "$name"
  return $rc
}

# Unmounts and removes what container_boot made for a container that stopped.
ct_release() {
  local name=$1 dir root cg pid
  dir=$(ct_dir "$name")
  if ! ct_systemd_host; then
    # Whatever of the container outlived its nspawn (killed) dies with its cgroup.
    for root in $(ct_cgroup_roots); do
      cg=$root/chappe-tests/$name
      [ -d "$cg" ] || continue
      for _ in $(seq 50); do
        find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null && break
        find "$cg" -name cgroup.procs -exec cat {} + | while read -r pid; do kill -KILL "$pid" 2>/dev/null; done
        sleep 0.1
      done
      [ ! -d "$cg" ] || ct_log "$name: cannot remove the cgroup $cg"
    done
  else
    systemctl stop "$name.scope" 2>/dev/null || true
  fi
  for _ in 1 2 3 4 5; do
    ! mountpoint -q "$dir/root" || umount "$dir/root" 2>/dev/null || { sleep 0.2; continue; }
    break
  done
  ! mountpoint -q "$dir/root" || umount -l "$dir/root" || true
  rm -rf "/run/systemd/nspawn/propagate/$name"
  if [ "${CHAPPE_KEEP_CONTAINERS:-0}" = 1 ]; then
    ct_log "$name: kept $dir"
  else
    rm -rf --one-file-system "$dir" || true
  fi
}

ct_netns_name() { echo "chappe-$CT_RUN-$1"; }

netns_path() { echo "/run/netns/$(ct_netns_name "${1:?netns_path NAME}")"; }

ct_netns_make() {
  local ns
  ns=$(ct_netns_name "$1")
  [ ! -e "/run/netns/$ns" ] || return 0
  ip netns add "$ns" && echo "$ns" >>"$CT_STATE/netns" && ip -n "$ns" link set lo up
}

ct_netns_addrs() { # NS IFNAME ADDR[,ADDR...]
  local addr
  for addr in ${3//,/ }; do
    case $addr in
      *:*) ip -n "$1" addr add "$addr" dev "$2" nodad || return 1 ;; # no 2 s of duplicate detection
      *) ip -n "$1" addr add "$addr" dev "$2" || return 1 ;;
    esac
  done
  ip -n "$1" link set "$2" up
}

netns_link() {
  local a=${1:?netns_link A ADDR_A B ADDR_B} addr_a=${2:?} b=${3:?} addr_b=${4:?} na nb
  ct_netns_make "$a" && ct_netns_make "$b" || return 1
  na=$(ct_netns_name "$a")
  nb=$(ct_netns_name "$b")
  ip link add "v-${b:0:13}" netns "$na" type veth peer name "v-${a:0:13}" netns "$nb" &&
    ct_netns_addrs "$na" "v-${b:0:13}" "$addr_a" && ct_netns_addrs "$nb" "v-${a:0:13}" "$addr_b"
}

container_cleanup() {
  local c ns
  [ -d "${CT_STATE:-}" ] && [ "$(cat "$CT_STATE/owner" 2>/dev/null)" = $$ ] || return 0
  for c in "$CT_STATE"/chappe-*; do
    [ -d "$c" ] && { container_stop "${c##*/}" 10 || true; }
  done
  for ns in $(cat "$CT_STATE/netns" 2>/dev/null); do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf --one-file-system "$CT_STATE" || true
}
