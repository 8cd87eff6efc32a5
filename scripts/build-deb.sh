#!/usr/bin/env bash
# Builds the Debian package of drainwatch with dpkg-deb from the release binary and the files
# of deploy/, dashboards/ and alerts/: no cargo-deb, no debhelper.
#
#   scripts/build-deb.sh            # builds target/release/drainwatch first (cargo, --locked)
#   SKIP_BUILD=1 scripts/build-deb.sh   # packages the binary already there
#
# Writes target/deb/drainwatch_<version>_<arch>.deb (version from Cargo.toml, architecture from
# dpkg) and prints its path as the last line. Layout and maintainer scripts: docs/install.md.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in dpkg-deb dpkg objcopy objdump ldd; do
  command -v "$tool" >/dev/null || { echo "build-deb: $tool is required (dpkg, binutils, libc-bin)" >&2; exit 1; }
done

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release --locked
fi
bin=target/release/drainwatch
[ -x "$bin" ] || { echo "build-deb: $bin is missing (cargo build --release --locked)" >&2; exit 1; }

version=$(sed -n '/^\[package\]/,/^\[/{s/^version *= *"\([^"]*\)".*/\1/p}' Cargo.toml | head -n1)
[ -n "$version" ] || { echo "build-deb: no version in Cargo.toml" >&2; exit 1; }
arch=$(dpkg --print-architecture)
name=drainwatch_${version}_${arch}
out=target/deb
root=$out/$name
rm -rf "$root" "$out/$name.deb"
mkdir -p "$root/DEBIAN"

# Timestamps of the files and of the archive: the last commit's (reproducible builds).
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH

inst() { # MODE SRC DEST
  install -D -m "$1" "$2" "$root/$3"
}

# The binary, without its debug information (the release profile keeps line tables).
install -d "$root/usr/bin"
objcopy --strip-debug --strip-unneeded "$bin" "$root/usr/bin/drainwatch"
chmod 0755 "$root/usr/bin/drainwatch"

inst 0644 deploy/systemd/drainwatch.service lib/systemd/system/drainwatch.service
inst 0644 deploy/debian/drainwatch.toml etc/drainwatch/drainwatch.toml
inst 0644 deploy/debian/default etc/default/drainwatch

for f in dashboards/*.json; do inst 0644 "$f" "usr/share/drainwatch/dashboards/$(basename "$f")"; done
for f in dashboards/provisioning/*.yml; do inst 0644 "$f" "usr/share/drainwatch/provisioning/$(basename "$f")"; done
for f in alerts/*.yml; do inst 0644 "$f" "usr/share/drainwatch/alerts/$(basename "$f")"; done

doc=usr/share/doc/drainwatch
inst 0644 README.md "$doc/README.md"
inst 0644 deploy/debian/copyright "$doc/copyright"
for f in install configuration metrics drain runbook dashboards classification; do
  inst 0644 "docs/$f.md" "$doc/$f.md"
done
inst 0644 deploy/alertmanager/alertmanager.yml "$doc/examples/alertmanager.yml"
# Debian wants a changelog (changelog.gz: a native package); this one says where the history is.
changelog_date=$(date -u -R -d "@$SOURCE_DATE_EPOCH")
maintainer=${DEB_MAINTAINER:-$(git log -1 --format='%an <%ae>' 2>/dev/null || echo 'drainwatch maintainers <root@localhost>')}
printf 'drainwatch (%s) unstable; urgency=medium\n\n  * Built from the drainwatch repository; its git log is the history.\n\n -- %s  %s\n' \
  "$version" "$maintainer" "$changelog_date" | gzip -9n > "$root/$doc/changelog.gz"
chmod 0644 "$root/$doc/changelog.gz"

# Depends, computed: the package of each shared library the binary needs; libc6 at least the
# newest GLIBC symbol version it uses.
owner() { # the package owning a file, trying the path as given, resolved, and without /usr
  local f
  for f in "$1" "$(readlink -f "$1")" "$(readlink -f "$1" | sed 's|^/usr/|/|')"; do
    dpkg -S "$f" 2>/dev/null | head -n1 | cut -d: -f1 | grep . && return 0
  done
  return 1
}
depends=()
while read -r path; do
  pkg=$(owner "$path") || { echo "build-deb: no package owns $path" >&2; exit 1; }
  depends+=("$pkg")
done < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
glibc=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n1)
depends_line=$(printf '%s\n' "${depends[@]}" | sort -u | sed "s/^libc6\$/libc6 (>= $glibc)/" | paste -sd, - | sed 's/,/, /g')

installed_size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<EOF
Package: drainwatch
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_size
Depends: $depends_line
Recommends: adduser
Section: net
Priority: optional
Description: per-port TCP connection exporter for draining backends
 drainwatch runs on every backend host behind an L4 load balancer and
 exports, per local port, new versus active connections, the TCP state mix,
 connection ages and lifetimes, resets, timeouts and a drain verdict, read
 from the kernel (netlink sock_diag, destroy events, tracepoints), as
 Prometheus metrics.
 .
 The package runs it as the unprivileged user drainwatch under a hardened
 systemd unit, and ships Grafana dashboards and Prometheus alert rules.
EOF
printf '/etc/drainwatch/drainwatch.toml\n/etc/default/drainwatch\n' > "$root/DEBIAN/conffiles"
for s in postinst prerm postrm; do install -m 0755 "deploy/debian/$s" "$root/DEBIAN/$s"; done
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) > "$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"

find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
dpkg-deb --root-owner-group -Zxz --build "$root" "$out/$name.deb" >/dev/null
echo "$out/$name.deb"
