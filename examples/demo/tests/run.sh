# The demo's test suite, run by busybox sh inside the test image (or on a host with busybox).
#
#   TEST_TYPE        pre-deployment | pre-integration | post-integration
#   TARGET_URL       the new color directly (pre-integration) or the service's route through the
#                    proxy (post-integration); unused before deployment
#   TARGET_URLS      every instance of the new color (pre-integration), space separated; optional
#   TARGET_HOST      Host header to send (services routed by host name); optional
#   EXPECT_VERSION   the version the service must report; default: the tag the suite was built
#                    with (DEMO_SUITE_VERSION), no comparison when both are empty
#   FAIL_TEST_TYPE   when equal to TEST_TYPE the suite fails on purpose (to rehearse a rollback)
#   JUNIT_DIR        when set, a JUnit XML report is written there
#   DEMO_SRC         the service's build context (default /src/app, copied into the image)
#
# Prints one line per check and exits 1 when any check failed, 2 on bad usage.
set -u

TEST_TYPE=${TEST_TYPE:-}
TARGET_URL=${TARGET_URL:-}
EXPECT_VERSION=${EXPECT_VERSION:-${DEMO_SUITE_VERSION:-}}
SRC=${DEMO_SRC:-/src/app}
TMP=${TMPDIR:-/tmp}/demo-suite.$$

passed=0
failed=0
cases=""

xml_escape() {
    printf '%s' "$1" | sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g' -e 's/"/\&quot;/g'
}

pass() {
    passed=$((passed + 1))
    echo "PASS  $1"
    cases="$cases<testcase classname=\"demo.$TEST_TYPE\" name=\"$(xml_escape "$1")\"/>"
}

fail() {
    failed=$((failed + 1))
    echo "FAIL  $1: $2"
    cases="$cases<testcase classname=\"demo.$TEST_TYPE\" name=\"$(xml_escape "$1")\"><failure message=\"$(xml_escape "$2")\"/></testcase>"
}

# check NAME COMMAND...: passes when the command succeeds; its output is the failure detail
check() {
    name=$1
    shift
    if detail=$("$@" 2>&1); then pass "$name"; else fail "$name" "$(echo "$detail" | tail -n 1)"; fi
}

# busybox 1.35's own `wget -T` crashes (SIGSEGV): bound each request with `timeout` instead
fetch() {
    if [ -n "${TARGET_HOST:-}" ]; then
        timeout 5 wget -q -O - --header "Host: $TARGET_HOST" "$1"
    else
        timeout 5 wget -q -O - "$1"
    fi
}

# expect_body URL TEXT: the body of URL equals TEXT (trailing newline ignored)
expect_body() {
    body=$(fetch "$1") || { echo "GET $1 failed"; return 1; }
    [ "$body" = "$2" ] || { echo "GET $1 answered '$body', expected '$2'"; return 1; }
}

# expect_in URL TEXT: the body of URL contains TEXT
expect_in() {
    body=$(fetch "$1") || { echo "GET $1 failed"; return 1; }
    case "$body" in *"$2"*) return 0 ;; esac
    echo "GET $1 does not contain '$2'"
    return 1
}

is_tag() {
    case "$1" in "" | *[!A-Za-z0-9_.-]*) echo "'$1' is not a version tag"; return 1 ;; esac
}

# -- pre-deployment: the build context is sane and renders both versions ---------------------------
file_has() { grep -q -e "$2" "$1" || { echo "$1 lacks $2"; return 1; }; }

exec_form_only() {
    # RUN, ENTRYPOINT, CMD and HEALTHCHECK CMD must be exec form: a scratch image has no /bin/sh
    bad=$(grep -n -E '^[[:space:]]*(RUN|ENTRYPOINT|CMD)[[:space:]]+[^[[:space:]]|HEALTHCHECK.*[[:space:]]CMD[[:space:]]+[^[[:space:]]' "$1")
    [ -z "$bad" ] || { echo "shell form in $1: $bad"; return 1; }
}

render_as() {
    CDLIB_TAG=$1 sh "$SRC/render.sh" "$SRC" "$TMP/$1" >/dev/null || { echo "render.sh failed for $1"; return 1; }
    [ "$(cat "$TMP/$1/version")" = "$1" ] || { echo "version file is not $1"; return 1; }
    [ "$(cat "$TMP/$1/health")" = "ok" ] || { echo "health file is not ok"; return 1; }
    ! grep -q '@[A-Z]*@' "$TMP/$1/index.html" || { echo "placeholder left in index.html"; return 1; }
    grep -q "id=\"version\">$1<" "$TMP/$1/index.html" || { echo "index.html does not name $1"; return 1; }
}

notes_only_where_expected() {
    grep -q 'New in v2' "$TMP/v2/index.html" || { echo "v2 index lacks its notes"; return 1; }
    ! grep -q 'New in v2' "$TMP/v1/index.html" || { echo "v1 index shows the v2 notes"; return 1; }
}

rejects_bad_tag() {
    if CDLIB_TAG='v1;rm' sh "$SRC/render.sh" "$SRC" "$TMP/bad" >/dev/null 2>&1; then
        echo "render.sh accepted an invalid tag"
        return 1
    fi
}

suite_detects_failures() {
    # the helpers must report a dead target as a failure, or every check above proves nothing
    if expect_body "http://127.0.0.1:1/health" ok >/dev/null 2>&1; then
        echo "expect_body passed against a closed port"
        return 1
    fi
}

pre_deployment() {
    mkdir -p "$TMP"
    check "build context present" test -f "$SRC/Dockerfile" -a -f "$SRC/render.sh" -a -f "$SRC/site/index.html"
    check "Dockerfile takes the version from CDLIB_TAG" file_has "$SRC/Dockerfile" '^ARG CDLIB_TAG'
    check "Dockerfile has a health check" file_has "$SRC/Dockerfile" '^HEALTHCHECK'
    check "Dockerfile uses exec form only" exec_form_only "$SRC/Dockerfile"
    check "index template has its placeholders" file_has "$SRC/site/index.html" '@VERSION@'
    for note in "$SRC"/notes/*.html; do
        [ -e "$note" ] || continue
        v=$(basename "$note" .html)
        check "notes file $v.html is named after a version" is_tag "$v"
    done
    check "renders v1" render_as v1
    check "renders v2" render_as v2
    check "only v2 shows the v2 notes" notes_only_where_expected
    check "render.sh rejects an invalid version" rejects_bad_tag
    check "the suite detects a dead target" suite_detects_failures
    rm -rf "$TMP"
}

# -- pre-integration: every instance of the new color, directly -----------------------------------
pre_integration() {
    urls=${TARGET_URLS:-$TARGET_URL}
    if [ -z "$urls" ]; then
        fail "target given" "TARGET_URL is empty"
        return
    fi
    seen=""
    for url in $urls; do
        base=${url%/}
        check "$base/health answers ok" expect_body "$base/health" ok
        version=$(fetch "$base/version" 2>/dev/null)
        check "$base/version is a version" is_tag "$version"
        if [ -n "$EXPECT_VERSION" ]; then
            check "$base/version is $EXPECT_VERSION" expect_body "$base/version" "$EXPECT_VERSION"
        fi
        check "$base/ names the version" expect_in "$base/" "id=\"version\">$version<"
        [ -z "$seen" ] || check "$base serves the same version as the others" test "$seen" = "$version"
        seen=$version
    done
}

# -- post-integration: through the proxy ------------------------------------------------------------
same_version_repeatedly() {
    # both replicas sit behind the proxy: every answer must come from the new version
    i=0
    while [ $i -lt 10 ]; do
        expect_body "$1/version" "$2" || return 1
        i=$((i + 1))
    done
}

post_integration() {
    if [ -z "$TARGET_URL" ]; then
        fail "target given" "TARGET_URL is empty"
        return
    fi
    base=${TARGET_URL%/}
    version=$(fetch "$base/version" 2>/dev/null)
    check "$base/version through the proxy is a version" is_tag "$version"
    if [ -n "$EXPECT_VERSION" ]; then
        check "$base/version through the proxy is $EXPECT_VERSION" expect_body "$base/version" "$EXPECT_VERSION"
    fi
    check "$base/ through the proxy names the version" expect_in "$base/" "id=\"version\">$version<"
    check "$base/health through the proxy answers ok" expect_body "$base/health" ok
    check "10 requests through the proxy all answer $version" same_version_repeatedly "$base" "$version"
}

# -- main ---------------------------------------------------------------------------------------------
echo "demo suite: $TEST_TYPE against ${TARGET_URL:-(no target)}${EXPECT_VERSION:+, expecting $EXPECT_VERSION}"
case "$TEST_TYPE" in
    pre-deployment) pre_deployment ;;
    pre-integration) pre_integration ;;
    post-integration) post_integration ;;
    *)
        echo "TEST_TYPE must be pre-deployment, pre-integration or post-integration, got '$TEST_TYPE'" >&2
        exit 2
        ;;
esac

if [ -n "${FAIL_TEST_TYPE:-}" ] && [ "$FAIL_TEST_TYPE" = "$TEST_TYPE" ]; then
    fail "forced failure" "FAIL_TEST_TYPE=$FAIL_TEST_TYPE asks this suite to fail"
fi

if [ -n "${JUNIT_DIR:-}" ]; then
    mkdir -p "$JUNIT_DIR"
    {
        echo '<?xml version="1.0" encoding="UTF-8"?>'
        echo "<testsuite name=\"demo.$TEST_TYPE\" tests=\"$((passed + failed))\" failures=\"$failed\">$cases</testsuite>"
    } > "$JUNIT_DIR/demo-$TEST_TYPE.xml"
fi

echo "demo suite: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
