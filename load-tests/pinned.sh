# Sourced by the side-by-side scripts (peers-*.sh): processes pinned to a CPU, and the CPU
# they used. The script sets W (its work directory) and PIDS (killed at exit).

# start NAME CPU CMD...: runs CMD on CPU in the background; its PID goes to $W/NAME.pidnum.
start() {
  local name=$1 cpu=$2; shift 2
  taskset -c "$cpu" "$@" >"$W/$name.out" 2>&1 &
  PIDS+=($!); echo $! >"$W/$name.pidnum"
}

# tree_ticks PID: user + system clock ticks of PID and its children (nginx's workers); every
# thread of a process is in its own /proc/PID/stat.
tree_ticks() {
  local t=0 p
  for p in $1 $(pgrep -P "$1"); do
    t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo $t
}

HZ=$(getconf CLK_TCK)
