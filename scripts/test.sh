#!/usr/bin/env bash
# test.sh — the whole test suite, as CI runs it: installs the test dependencies,
# builds three times (normal, ASan+UBSan, release) with warnings as errors, runs every
# test in the first two and the unit and plugins tests in the release build, builds the
# libFuzzer targets with clang and runs each briefly, then the benchmarks (figures only,
# never pass/fail). Ends with "N passed, N failed".
# Run as root for the full suite (peer-credential, ownership and mount tests skip
# otherwise, saying why). Options: --quick (normal build only, no fuzz, no bench).
set -uo pipefail
cd "$(dirname "$0")/.."
quick=0
[ "${1:-}" = "--quick" ] && quick=1
if [ "$(id -u)" = 0 ]; then ./scripts/deps.sh --test || exit 1; fi

passed=0 failed=0 skipped=0
count() { # $1 = build dir: adds the results of its last meson test run
        local log="$1/meson-logs/testlog.json"
        [ -f "$log" ] || { failed=$((failed + 1)); return; }
        local p f s
        p=$(grep -c '"result": "OK"' "$log"); f=$(grep -Ec '"result": "(FAIL|TIMEOUT|ERROR|UNEXPECTEDPASS)"' "$log")
        s=$(grep -c '"result": "SKIP"' "$log")
        passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
}
suite() { # $1 = build dir, rest = meson setup options
        local dir=$1; shift
        if ! { [ -d "$dir" ] || meson setup --wrap-mode=nofallback "$dir" "$@" >/dev/null; } || ! ninja -C "$dir" -j2; then
                echo "BUILD FAILED: $dir"; failed=$((failed + 1)); return
        fi
        meson test -C "$dir" --no-rebuild --print-errorlogs --num-processes 2 ${suites:---suite unit --suite plugins --suite e2e}
        count "$dir"
}

suite build-ci
if [ $quick = 0 ]; then
        suite build-ci-asan -Db_sanitize=address,undefined -Dbuildtype=debug
        suites="--suite unit --suite plugins" suite build-ci-release -Dbuildtype=release # -O3 warns otherwise; no e2e (time)
        if command -v clang >/dev/null; then
                # the whole tree with clang too: its warnings are not gcc's
                if { [ -d build-ci-clang ] || CC=clang meson setup --wrap-mode=nofallback build-ci-clang >/dev/null; } && ninja -C build-ci-clang -j2 >/dev/null; then
                        echo "clang build: ok"; passed=$((passed + 1))
                else
                        echo "BUILD FAILED: clang"; ninja -C build-ci-clang -j2 2>&1 | grep -E "error" | head -20; failed=$((failed + 1))
                fi
                if CC=clang meson setup --wrap-mode=nofallback build-ci-fuzz -Dfuzz=true -Dtests=false -Db_sanitize=address,undefined >/dev/null &&
                        ninja -C build-ci-fuzz -j2; then
                        for f in build-ci-fuzz/test/fuzz/fuzz-*; do
                                [ -f "$f" ] && [ -x "$f" ] || continue
                                name=$(basename "$f") extra=()
                                [ -f "test/fuzz/$name.dict" ] && extra+=("-dict=test/fuzz/$name.dict")
                                mkdir -p "$f.corpus" && extra+=("$f.corpus")
                                [ -d "test/fuzz/corpus/$name" ] && extra+=("test/fuzz/corpus/$name")
                                if "$f" -max_total_time=20 -rss_limit_mb=2048 -print_final_stats=1 "${extra[@]}" \
                                        >"$f.log" 2>&1; then
                                        echo "fuzz $name: ok, $(grep -o 'number_of_executed_units: [0-9]*' "$f.log" | grep -o '[0-9]*') runs, $(grep -o 'cov: [0-9]*' "$f.log" | tail -1)"
                                        passed=$((passed + 1))
                                else
                                        echo "fuzz $name: FAILED"; tail -30 "$f.log"; failed=$((failed + 1))
                                fi
                        done
                else
                        echo "BUILD FAILED: fuzz targets"; failed=$((failed + 1))
                fi
        fi
        # the Debian packages: build in a copy, lintian, install, start, purge (one count per step)
        pkglog=$(mktemp)
        ./scripts/package-test.sh 2>&1 | tee "$pkglog"
        if line=$(grep -E '^package: [0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' "$pkglog"); then
                read -r p f s <<<"$(sed -E 's/^package: ([0-9]+) passed, ([0-9]+) failed, ([0-9]+) skipped$/\1 \2 \3/' <<<"$line")"
                passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
        else
                echo "package-test.sh: no summary line"; failed=$((failed + 1))
        fi
        rm -f "$pkglog"
        echo "== benchmarks (figures, not pass/fail) =="
        # every figure: the command lines and separators go, the figures stay (no tail: the
        # first benchmarks' figures were cut off)
        meson test -C build-ci --benchmark --no-rebuild --verbose 2>&1 |
                grep -vE '^(ninja|\s*$|>>> |.*――――)' || true
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
