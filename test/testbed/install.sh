#!/usr/bin/env bash
# install.sh builds or installs the test bed's real parts (docs/design-notes.md,
# "Test bed") into a git-ignored cache, idempotently, printing progress as it
# goes:
#
#   kube-apiserver  built from the Go module proxy (k8s.io/kubernetes)
#   etcd            Debian's etcd-server, unpacked into the cache
#   sops, helm v3, helm v4, age-keygen, age, promtool   `go install` from the
#                   module proxy (promtool tests the shipped alert rules)
#   CRDs            cert-manager's, the ServiceMonitor and PrometheusRule
#                   CRDs, from their Go modules, for dry-runs of the manifests
#   kustomize-controller  Flux's, built from the Go module proxy, with its
#                   Kustomization CRD and source-controller's source CRDs
#                   (the GitOps test runs it against the test bed)
#   node            (only with `install.sh node`, not yet in `all`) kubelet,
#                   kube-controller-manager, kube-scheduler built like
#                   kube-apiserver; containerd v2 from the module proxy;
#                   Debian's runc and CNI plugins, unpacked into the cache
#
# Everything lands in $TESTBED_CACHE (default: <repo>/.cache/testbed) under a
# name that carries its version, so a version bump rebuilds and an unchanged
# version costs nothing. The last step writes $TESTBED_CACHE/env, which the
# Makefile and the tests read.
#
# Usage: test/testbed/install.sh [all|apiserver|etcd|sops|helm|age|promtool|crds|flux|node]
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-1.37.2}
STAGING_VERSION=${STAGING_VERSION:-v0.37.2}
SOPS_VERSION=${SOPS_VERSION:-v3.13.3}
HELM3_VERSION=${HELM3_VERSION:-v3.22.0}
HELM4_VERSION=${HELM4_VERSION:-v4.3.1}
AGE_VERSION=${AGE_VERSION:-v1.3.1}
CERT_MANAGER_VERSION=${CERT_MANAGER_VERSION:-v1.21.2}
PROM_OPERATOR_VERSION=${PROM_OPERATOR_VERSION:-v0.85.0}
PROMETHEUS_VERSION=${PROMETHEUS_VERSION:-v0.316.0}
# kustomize-controller v1.10 needs fluxcd/pkg modules the proxy refuses; v1.9.6
# builds. Its source API is source-controller v1.9.0 (its go.mod).
KUSTOMIZE_CONTROLLER_VERSION=${KUSTOMIZE_CONTROLLER_VERSION:-v1.9.6}
SOURCE_CONTROLLER_VERSION=${SOURCE_CONTROLLER_VERSION:-v1.9.0}
# The real node (not in `all` yet: `install.sh node`).
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.4.2}
# kube-router's firewall alone enforces NetworkPolicy on the node (test bed
# only, never shipped; docs/design-notes.md, "Test bed", says why this one).
KUBE_ROUTER_VERSION=${KUBE_ROUTER_VERSION:-v2.1.0}

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${TESTBED_CACHE:-$ROOT/.cache/testbed}
BIN=$CACHE/bin
ASSETS=$CACHE/k8s/$KUBE_VERSION
NODE=$CACHE/node
mkdir -p "$BIN" "$ASSETS" "$CACHE/src" "$CACHE/log"

export GOFLAGS=-buildvcs=false CGO_ENABLED=0

step() { printf '==> [testbed %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# progress counts the packages `go build -v` reports, printing a line every
# 100 so a long cold build shows it is alive without flooding the log.
progress() {
	local log=$1 n=0 line
	while IFS= read -r line; do
		printf '%s\n' "$line" >>"$log"
		n=$((n + 1))
		if ((n % 100 == 0)); then
			printf '    ... %d packages compiled\n' "$n"
		fi
	done
}

# fail shows the end of a build log and stops.
fail() {
	echo "build failed; last lines of $1:" >&2
	tail -n 30 "$1" >&2
	exit 1
}

# gobin NAME VERSION PKG@VERSION builds one tool with `go install` into the
# cache under NAME-VERSION and links NAME to it.
gobin() {
	local name=$1 version=$2 pkg=$3 target="$BIN/$1-$2"
	if [[ -x $target ]]; then
		step "$name $version: cached"
	else
		step "$name $version: building $pkg (cold: a few minutes)"
		local tmp
		tmp=$(mktemp -d)
		: >"$CACHE/log/$name-$version.log"
		GOBIN=$tmp go install -v -trimpath "$pkg" 2>&1 | progress "$CACHE/log/$name-$version.log" ||
			fail "$CACHE/log/$name-$version.log"
		mv "$tmp/$(basename "${pkg%%@*}")" "$target"
		rm -rf "$tmp"
		step "$name $version: built"
	fi
	ln -sfn "$name-$version" "$BIN/$name"
}

# kubebin NAME builds k8s.io/kubernetes/cmd/NAME into the assets folder from
# a throwaway module that requires k8s.io/kubernetes and replaces each
# staging module that it replaces with a local path by its published release.
# All components share the module and the build cache.
kubebin() {
	local name=$1 target=$ASSETS/$1
	# The stamp marks a binary that reports its version (/version): Helm
	# checks charts' kubeVersion against kube-apiserver's.
	if [[ -x $target && -f $target.versioned ]]; then
		step "$name v$KUBE_VERSION: cached"
		return
	fi
	step "$name v$KUBE_VERSION: building from the module proxy (cold: ${2:-a few minutes} on 2 cores)"
	local mod=$CACHE/src/kube-apiserver-$KUBE_VERSION
	mkdir -p "$mod"
	if [[ ! -f $mod/go.sum ]]; then
		local kmod
		kmod=$(go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
		{
			echo "module testbed/kubeapiserver"
			echo
			echo "go 1.26"
			echo
			echo "require k8s.io/kubernetes v$KUBE_VERSION"
			echo
			echo "replace ("
			sed -n '/^replace (/,/^)/p' "$kmod" |
				sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\t\1 => \1 '"$STAGING_VERSION"'#p'
			echo ")"
		} >"$mod/go.mod"
	fi
	(
		cd "$mod"
		step "$name: resolving modules"
		go get "k8s.io/kubernetes/cmd/$name@v$KUBE_VERSION"
		step "$name: compiling"
		local log=$CACHE/log/$name-$KUBE_VERSION.log
		: >"$log"
		local v=k8s.io/component-base/version minor=${KUBE_VERSION#*.}
		minor=${minor%%.*}
		go build -v -trimpath -ldflags "-X $v.gitVersion=v$KUBE_VERSION -X $v.gitMajor=${KUBE_VERSION%%.*} -X $v.gitMinor=$minor -X $v.gitTreeState=clean" \
			-o "$target.tmp" "k8s.io/kubernetes/cmd/$name" 2>&1 |
			progress "$log" || fail "$log"
	)
	mv "$target.tmp" "$target"
	touch "$target.versioned"
	step "$name v$KUBE_VERSION: built"
}

apiserver() { kubebin kube-apiserver "about 13 minutes"; }

# debroot PACKAGE ROOT unpacks Debian's PACKAGE into the folder ROOT;
# nothing is installed on the host.
debroot() {
	local pkg=$1 root=$2 tmp
	tmp=$(mktemp -d)
	(
		cd "$tmp"
		if ! apt-get download "$pkg" >/dev/null 2>&1; then
			step "$pkg: refreshing Debian's package lists"
			apt-get update -qq
			apt-get download "$pkg"
		fi
	)
	dpkg-deb -x "$tmp/$pkg"_*.deb "$root"
	rm -rf "$tmp"
}

# debbin PACKAGE DIR FILE... copies FILE... (paths inside Debian's PACKAGE)
# into DIR.
debbin() {
	local pkg=$1 dir=$2 tmp f
	shift 2
	tmp=$(mktemp -d)
	debroot "$pkg" "$tmp"
	mkdir -p "$dir"
	for f in "$@"; do cp "$tmp/$f" "$dir/"; done
	rm -rf "$tmp"
}

# nodedeb PACKAGE FILE... puts FILE... of Debian's PACKAGE into $NODE/bin.
nodedeb() {
	local pkg=$1 f missing=
	shift
	for f in "$@"; do [[ -x $NODE/bin/$(basename "$f") ]] || missing=1; done
	if [[ -z $missing ]]; then
		step "$pkg: cached"
		return
	fi
	step "$pkg: unpacking Debian's package into the cache"
	debbin "$pkg" "$NODE/bin" "$@"
}

# iptables unpacks Debian's iptables (nf_tables backend) and the libraries
# it links into $NODE/iptables, and writes the commands kube-proxy and the
# kubelet run into $NODE/bin as wrappers that load them from there.
iptables() {
	local root=$NODE/iptables c
	if [[ -x $root/usr/sbin/xtables-nft-multi ]]; then
		step "iptables: cached"
	else
		step "iptables: unpacking Debian's iptables and its libraries into the cache"
		local p
		rm -rf "$root"
		mkdir -p "$root"
		for p in iptables libip4tc2 libip6tc2 libxtables12 libmnl0 libnetfilter-conntrack3 libnfnetlink0 libnftnl11; do
			debroot "$p" "$root"
		done
	fi
	local lib
	lib=$(echo "$root"/usr/lib/*-linux-gnu)
	for c in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
		printf '#!/bin/sh\nLD_LIBRARY_PATH=%s XTABLES_LIBDIR=%s/xtables exec %s %s "$@"\n' \
			"$lib" "$lib" "$root/usr/sbin/xtables-nft-multi" "$c" >"$NODE/bin/$c"
		chmod +x "$NODE/bin/$c"
	done
}

# ipset unpacks Debian's ipset and its library into $NODE/ipset and writes
# an ipset command into $NODE/bin that loads them from there, for
# kube-router's firewall.
ipset() {
	local root=$NODE/ipset
	if [[ -x $root/usr/sbin/ipset ]]; then
		step "ipset: cached"
	else
		step "ipset: unpacking Debian's ipset and its library into the cache"
		rm -rf "$root"
		mkdir -p "$root"
		debroot ipset "$root"
		debroot libipset13 "$root"
		debroot libmnl0 "$root"
	fi
	printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$(echo "$root"/usr/lib/*-linux-gnu)" "$root/usr/sbin/ipset" >"$NODE/bin/ipset"
	chmod +x "$NODE/bin/ipset"
}

# kuberouter builds kube-router with `go install` and puts it on the node;
# the test bed runs only its NetworkPolicy firewall.
kuberouter() {
	gobin kube-router "$KUBE_ROUTER_VERSION" "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$KUBE_ROUTER_VERSION"
	mkdir -p "$NODE/bin"
	ln -sfn "$BIN/kube-router-$KUBE_ROUTER_VERSION" "$NODE/bin/kube-router"
}

# containerd builds containerd v2, its runc shim and ctr with `go install`,
# without cgo and without the snapshotters that need it.
containerd() {
	local v=$CONTAINERD_VERSION c
	mkdir -p "$NODE/bin"
	for c in containerd containerd-shim-runc-v2 ctr; do
		local target=$BIN/$c-$v
		if [[ -x $target ]]; then
			step "$c $v: cached"
		else
			step "$c $v: building github.com/containerd/containerd/v2/cmd/$c (cold: about a minute)"
			local tmp
			tmp=$(mktemp -d)
			: >"$CACHE/log/$c-$v.log"
			GOBIN=$tmp go install -v -trimpath -tags "no_btrfs no_devmapper no_zfs" \
				"github.com/containerd/containerd/v2/cmd/$c@$v" 2>&1 | progress "$CACHE/log/$c-$v.log" ||
				fail "$CACHE/log/$c-$v.log"
			mv "$tmp/$c" "$target"
			rm -rf "$tmp"
		fi
		ln -sfn "$target" "$NODE/bin/$c"
	done
}

# node builds the test bed's real node (docs/design-notes.md, "Test bed"):
# kubelet, kube-controller-manager, kube-scheduler and kube-proxy like
# kube-apiserver, containerd v2, and Debian's runc, CNI plugins and iptables,
# all into $NODE.
node() {
	kubebin kubelet "about 80 s on top of kube-apiserver's"
	kubebin kube-controller-manager "about 130 s on top of kube-apiserver's"
	kubebin kube-scheduler "about 20 s on top of kube-apiserver's"
	kubebin kube-proxy "about 40 s on top of kube-apiserver's"
	local c
	mkdir -p "$NODE/bin"
	for c in kubelet kube-controller-manager kube-scheduler kube-proxy; do ln -sfn "$ASSETS/$c" "$NODE/bin/$c"; done
	containerd
	nodedeb runc usr/sbin/runc
	nodedeb containernetworking-plugins usr/lib/cni/bridge usr/lib/cni/host-local usr/lib/cni/loopback
	iptables
	ipset
	kuberouter
}

etcd() {
	local target=$ASSETS/etcd
	if [[ -x $target ]]; then
		step "etcd: cached ($("$target" --version | head -1))"
		return
	fi
	step "etcd: unpacking Debian's etcd-server into the cache"
	debbin etcd-server "$ASSETS" usr/bin/etcd
	step "etcd: $("$target" --version | head -1)"
}

sops() { gobin sops "$SOPS_VERSION" "github.com/getsops/sops/v3/cmd/sops@$SOPS_VERSION"; }
age() {
	gobin age-keygen "$AGE_VERSION" "filippo.io/age/cmd/age-keygen@$AGE_VERSION"
	gobin age "$AGE_VERSION" "filippo.io/age/cmd/age@$AGE_VERSION"
}
promtool() {
	gobin promtool "$PROMETHEUS_VERSION" "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION"
}
helm() {
	gobin helm3 "$HELM3_VERSION" "helm.sh/helm/v3/cmd/helm@$HELM3_VERSION"
	gobin helm4 "$HELM4_VERSION" "helm.sh/helm/v4/cmd/helm@$HELM4_VERSION"
	ln -sfn helm3 "$BIN/helm"
}

# crdsfrom NAME MODULE@VERSION DIR FILE... copies CRD files out of a Go
# module (downloaded through the module proxy) into $CACHE/crds/NAME.
crdsfrom() {
	local name=$1 mod=$2 dir=$3
	shift 3
	local target=$CACHE/crds/$name f missing=
	for f in "$@"; do [[ -f $target/$f ]] || missing=1; done
	if [[ -f $target/.done && -z $missing ]]; then
		step "CRDs $name: cached"
		return
	fi
	step "CRDs $name: go mod download $mod"
	local src
	src=$(cd "$CACHE/src" && GOFLAGS=-mod=mod go mod download -json "$mod" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	[[ -d $src/$dir ]] || { echo "no $dir in $mod" >&2; exit 1; }
	mkdir -p "$target"
	for f in "$@"; do cp "$src/$dir/$f" "$target/"; done
	touch "$target/.done"
}

crds() {
	crdsfrom cert-manager-$CERT_MANAGER_VERSION "github.com/cert-manager/cert-manager@$CERT_MANAGER_VERSION" deploy/crds \
		cert-manager.io_certificates.yaml cert-manager.io_issuers.yaml cert-manager.io_clusterissuers.yaml cert-manager.io_certificaterequests.yaml
	crdsfrom prometheus-operator-$PROM_OPERATOR_VERSION "github.com/prometheus-operator/prometheus-operator@$PROM_OPERATOR_VERSION" example/prometheus-operator-crd \
		monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_prometheusrules.yaml
}

# flux builds Flux's kustomize-controller in a throwaway module, as
# apiserver does for kube-apiserver: a `go build` of a module's main package
# ignores that module's own replace directives, so the four that its go.mod
# needs are copied here.
flux() {
	local v=$KUSTOMIZE_CONTROLLER_VERSION target=$BIN/kustomize-controller-$KUSTOMIZE_CONTROLLER_VERSION
	if [[ -x $target ]]; then
		step "kustomize-controller $v: cached"
	else
		step "kustomize-controller $v: building from the module proxy (cold: about 5 minutes on 2 cores)"
		local mod=$CACHE/src/kustomize-controller-$v kmod
		mkdir -p "$mod"
		kmod=$(cd "$CACHE/src" && GOFLAGS=-mod=mod go mod download -json "github.com/fluxcd/kustomize-controller@$v" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
		{
			echo "module testbed/kustomizecontroller"
			echo
			echo "go 1.26"
			echo
			echo "require github.com/fluxcd/kustomize-controller $v"
			echo
			# The replace directives that name a published version (not ./api).
			grep -E '^(replace )?[[:space:]]*[^ ]+ => [^ .][^ ]* v[^ ]+$' "$kmod" |
				sed -E 's/^replace //; s/^[[:space:]]*/replace /'
		} >"$mod/go.mod"
		(
			cd "$mod"
			step "kustomize-controller: resolving modules"
			go get "github.com/fluxcd/kustomize-controller@$v"
			step "kustomize-controller: compiling"
			local log=$CACHE/log/kustomize-controller-$v.log
			: >"$log"
			go build -v -trimpath -o "$target.tmp" github.com/fluxcd/kustomize-controller 2>&1 |
				progress "$log" || fail "$log"
		)
		mv "$target.tmp" "$target"
		step "kustomize-controller $v: built"
	fi
	ln -sfn "kustomize-controller-$v" "$BIN/kustomize-controller"
	crdsfrom kustomize-controller-$v "github.com/fluxcd/kustomize-controller@$v" config/crd/bases \
		kustomize.toolkit.fluxcd.io_kustomizations.yaml
	crdsfrom source-controller-$SOURCE_CONTROLLER_VERSION "github.com/fluxcd/source-controller@$SOURCE_CONTROLLER_VERSION" config/crd/bases \
		source.toolkit.fluxcd.io_gitrepositories.yaml source.toolkit.fluxcd.io_buckets.yaml \
		source.toolkit.fluxcd.io_ocirepositories.yaml source.toolkit.fluxcd.io_externalartifacts.yaml
}

writeenv() {
	cat >"$CACHE/env" <<EOF
# written by test/testbed/install.sh
KUBEBUILDER_ASSETS=$ASSETS
TESTBED_BIN=$BIN
SOPS_BIN=$BIN/sops
HELM3_BIN=$BIN/helm3
HELM4_BIN=$BIN/helm4
AGE_KEYGEN_BIN=$BIN/age-keygen
AGE_BIN=$BIN/age
PROMTOOL_BIN=$BIN/promtool
CRD_DIRS=$CACHE/crds/cert-manager-$CERT_MANAGER_VERSION:$CACHE/crds/prometheus-operator-$PROM_OPERATOR_VERSION
KUSTOMIZE_CONTROLLER_BIN=$BIN/kustomize-controller
FLUX_CRD_DIRS=$CACHE/crds/kustomize-controller-$KUSTOMIZE_CONTROLLER_VERSION:$CACHE/crds/source-controller-$SOURCE_CONTROLLER_VERSION
NODE_BIN=$NODE/bin
EOF
	step "ready: $CACHE/env"
}

what=${1:-all}
case $what in
all) etcd; sops; age; apiserver; helm; promtool; crds; flux; node ;;
apiserver | etcd | sops | helm | age | promtool | crds | flux | node) "$what" ;;
*) echo "usage: $0 [all|apiserver|etcd|sops|helm|age|promtool|crds|flux|node]" >&2; exit 2 ;;
esac
writeenv
