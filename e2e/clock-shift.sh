#!/usr/bin/env bash
# Runs the test suite with the system clock shifted ahead (libfaketime), once per offset, to prove
# that no test depends on the calendar: every certificate, token and CA a test makes must be made on
# the clock the code under test reads, so a suite that passes today passes on any later day.
#
#   e2e/clock-shift.sh                 # +400d and +730d, the whole suite
#   e2e/clock-shift.sh +90d -- pki     # one offset, only the files vitest matches with "pki"
#
# Needs Debian's `faketime` package (libfaketime). Processes that cannot run under libfaketime
# (redis-server's allocator deadlocks in it) are started without it by their test support.
set -euo pipefail
cd "$(dirname "$0")/.."

offsets=()
while (($# > 0)); do
  case "$1" in
    --) shift; break ;;
    +*d) offsets+=("$1"); shift ;;
    *) echo "clock-shift: unknown argument '$1' (offsets look like +400d; vitest filters go after --)" >&2; exit 2 ;;
  esac
done
((${#offsets[@]} > 0)) || offsets=(+400d +730d)

library=""
for candidate in /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 /usr/lib/*/faketime/libfaketime.so.1 /usr/lib/faketime/libfaketime.so.1; do
  if [[ -f "$candidate" ]]; then library="$candidate"; break; fi
done
if [[ -z "$library" ]]; then
  echo "clock-shift: libfaketime not found; install it with: apt-get install -y faketime" >&2
  exit 2
fi

failed=()
for offset in "${offsets[@]}"; do
  shifted=$(LD_PRELOAD="$library" FAKETIME="$offset" date -u +%Y-%m-%dT%H:%MZ)
  echo "clock-shift: the suite with the clock at $offset ($shifted)"
  # CUSTODY_CLOCK_SHIFT tells suites that cannot follow the shift (the Go control plane reads the
  # real clock) to skip, visibly.
  if ! CUSTODY_CLOCK_SHIFT="$offset" LD_PRELOAD="$library" FAKETIME="$offset" FAKETIME_DONT_RESET=1 \
    npx vitest run "$@"; then
    failed+=("$offset")
  fi
done

if ((${#failed[@]} > 0)); then
  echo "clock-shift: FAILED at ${failed[*]}: some test compares a fixed date with the clock; make it on the clock the code uses" >&2
  exit 1
fi
echo "clock-shift: passed at ${offsets[*]}"
