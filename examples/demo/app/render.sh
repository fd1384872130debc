# Renders the site of one version; run by busybox sh at image build time (and by the
# pre-deployment suite, to check it). The version is $CDLIB_TAG (a build argument).
#
# usage: busybox sh render.sh SRC OUT      writes OUT/index.html, OUT/version, OUT/health
set -eu

src=${1:?usage: render.sh SRC OUT}
out=${2:?usage: render.sh SRC OUT}
version=${CDLIB_TAG:-dev}

# the version ends up in HTML and in a sed expression: allow tag characters only
case "$version" in
    "" | *[!A-Za-z0-9_.-]*)
        echo "render: CDLIB_TAG must be a Docker tag ([A-Za-z0-9_.-]), got '$version'" >&2
        exit 2
        ;;
esac

mkdir -p "$out"
printf '%s\n' "$version" > "$out/version"
printf 'ok\n' > "$out/health"

notes="$src/notes/$version.html"
if [ -f "$notes" ]; then
    sed -e "s/@VERSION@/$version/g" -e "/@NOTES@/r $notes" -e "/@NOTES@/d" "$src/site/index.html" > "$out/index.html"
else
    sed -e "s/@VERSION@/$version/g" -e "/@NOTES@/d" "$src/site/index.html" > "$out/index.html"
fi
echo "render: version $version -> $out"
