# Shared by the launch scripts (tpu.sh, gpu_launch.sh) and experiments/device_check.sh; sourced, not run.
# The sourcing script sets PROG (its name, for error messages).

# Report a usage error as one line and exit 2.
die() {
  echo "$PROG: error: $*" >&2
  exit 2
}

# Quote one word for a POSIX shell: plain words stay as they are, others go in single quotes.
q() {
  if [[ -n "$1" && "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Quote a whole argv as one shell line.
qargs() {
  local out="" a
  for a in "$@"; do
    out+="${out:+ }$(q "$a")"
  done
  printf '%s' "$out"
}

# An option's value is present and non-empty: need_value OPTION "$2"
need_value() {
  [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"
}
