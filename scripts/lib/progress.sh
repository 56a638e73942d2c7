# Progress a person can follow through scripts/setup and scripts/build-kernel (sourced by both;
# scripts/lib/progress-test checks it). Everything goes to stderr, each line starting with
# "$PROGRESS_NAME: [elapsed]", where elapsed is the time since the script started.
#
#   phase TEXT                      a new step: its line, and the previous step's duration
#   with_progress LOG PROBE CMD...  run CMD (output to LOG); every PROGRESS_EVERY seconds (15)
#                                   a line with the step's elapsed time and what the function
#                                   PROBE prints (how far it got; "" for none). CMD's status.
#   installed WHAT WHERE            note a thing the run installed, for the summary
#   summary                         the steps' durations and what was installed where
#
# Helpers: human_bytes N (1.5 MB), fmt_secs N (1 min 05 s), dir_bytes DIR... (bytes under the
# directories that exist), apt_uris_bytes (total of the sizes in `apt-get --print-uris` output
# on stdin), apt_download_size ARGS... (bytes `apt-get install ARGS` would fetch).

PROGRESS_NAME="${PROGRESS_NAME:-$(basename "$0")}"
PROGRESS_START="${PROGRESS_START:-$SECONDS}"
progress_step="" progress_step_start="" progress_steps=() progress_installed=()

fmt_secs() {
    local s="$1"
    if [ "$s" -ge 60 ]; then printf '%d min %02d s' $((s / 60)) $((s % 60)); else printf '%d s' "$s"; fi
}

human_bytes() {
    awk -v b="$1" 'BEGIN {
        split("bytes KB MB GB TB", u, " "); i = 1
        while (b >= 1000 && i < 5) { b /= 1000; i++ }
        if (i == 1) printf "%d %s", b, u[i]; else printf "%.1f %s", b, u[i] }'
}

progress() {
    local t=$((SECONDS - PROGRESS_START))
    printf '%s: [%d:%02d] %s\n' "$PROGRESS_NAME" $((t / 60)) $((t % 60)) "$*" >&2
}

# The step that ends now, with its duration.
progress_end_step() {
    [ -n "$progress_step" ] || return 0
    progress_steps+=("$(fmt_secs $((SECONDS - progress_step_start))): $progress_step")
    progress_step=""
}

phase() {
    progress_end_step
    progress_step="$*" progress_step_start=$SECONDS
    progress "$*"
}

dir_bytes() {
    local d total=0 n
    for d in "$@"; do
        [ -e "$d" ] || continue
        n="$(du -sb "$d" 2>/dev/null | awk '{print $1}')"
        total=$((total + ${n:-0}))
    done
    echo "$total"
}

# `apt-get --print-uris` lines: 'URI' FILE SIZE HASH.
apt_uris_bytes() {
    awk "/^'/ { s += \$3 } END { printf \"%d\n\", s }"
}

apt_download_size() {
    apt-get install -qq --print-uris --no-install-recommends "$@" 2>/dev/null | apt_uris_bytes || echo 0
}

with_progress() {
    local log="$1" probe="$2" t0=$SECONDS pid rc=0 i extra
    shift 2
    "$@" >"$log" 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        for ((i = 0; i < ${PROGRESS_EVERY:-15}; i++)); do
            kill -0 "$pid" 2>/dev/null || break 2
            sleep 1
        done
        extra=""
        [ -z "$probe" ] || extra="$("$probe" 2>/dev/null || true)"
        progress "  ... $(fmt_secs $((SECONDS - t0)))${extra:+, $extra}"
    done
    wait "$pid" || rc=$?
    return "$rc"
}

installed() {
    progress_installed+=("$1: $2")
}

summary() {
    local l
    progress_end_step
    progress "done in $(fmt_secs $((SECONDS - PROGRESS_START)))"
    for l in "${progress_steps[@]}"; do printf '%s:   %s\n' "$PROGRESS_NAME" "$l" >&2; done
    if [ ${#progress_installed[@]} -gt 0 ]; then
        printf '%s: installed:\n' "$PROGRESS_NAME" >&2
        for l in "${progress_installed[@]}"; do printf '%s:   %s\n' "$PROGRESS_NAME" "$l" >&2; done
    else
        printf '%s: nothing new installed\n' "$PROGRESS_NAME" >&2
    fi
}
