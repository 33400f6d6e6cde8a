package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"path"
	"runtime"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// caBundlePath is where Go's crypto/x509 (and distroless) look for the CA
// bundle on Linux.
const caBundlePath = "/etc/ssl/certs/ca-certificates.crt"

// epoch is every file's time, and the image's creation time, so that the
// same inputs give the same digest.
var epoch = time.Unix(0, 0).UTC()

// inputs are what the image is made of.
type inputs struct {
	stage    runtimeStage
	binary   []byte
	caBundle []byte
}

// file is one entry of the image's layer.
type file struct {
	name     string
	mode     int64
	dir      bool
	uid, gid int
	body     []byte
}

// files lists the layer: the root-owned binary and CA bundle, the non-root
// user's passwd and group entries, a writable /tmp, and the user's home.
func (in inputs) files() ([]file, error) {
	uid, gid, err := ids(in.stage.User)
	if err != nil {
		return nil, err
	}
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", uid, gid)
	group := fmt.Sprintf("root:x:0:\nnonroot:x:%d:\n", gid)
	return []file{
		{name: "etc/", dir: true, mode: 0o755},
		{name: "etc/passwd", mode: 0o644, body: []byte(passwd)},
		{name: "etc/group", mode: 0o644, body: []byte(group)},
		{name: "etc/ssl/", dir: true, mode: 0o755},
		{name: "etc/ssl/certs/", dir: true, mode: 0o755},
		{name: strings.TrimPrefix(caBundlePath, "/"), mode: 0o644, body: in.caBundle},
		{name: "home/", dir: true, mode: 0o755},
		{name: "home/nonroot/", dir: true, mode: 0o700, uid: uid, gid: gid},
		{name: "tmp/", dir: true, mode: 0o1777},
		{name: strings.TrimPrefix(path.Clean(in.stage.BinaryPath), "/"), mode: 0o755, body: in.binary},
	}, nil
}

// ids splits a numeric uid:gid.
func ids(user string) (uid, gid int, err error) {
	u, g, _ := strings.Cut(user, ":")
	if uid, err = strconv.Atoi(u); err == nil {
		gid, err = strconv.Atoi(g)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("user %q is not a numeric uid:gid", user)
	}
	return uid, gid, nil
}

// layerTar writes files as a tar stream, parents before children.
func layerTar(files []file) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: f.mode, Uid: f.uid, Gid: f.gid, ModTime: epoch, Format: tar.FormatPAX}
		if f.dir {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("layer: %s: %w", f.name, err)
		}
		if _, err := tw.Write(f.body); err != nil {
			return nil, fmt.Errorf("layer: %s: %w", f.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	return buf.Bytes(), nil
}

// build returns the image: an empty base, one layer, and the runtime
// stage's user and entrypoint.
func build(in inputs) (v1.Image, error) {
	files, err := in.files()
	if err != nil {
		return nil, err
	}
	layerBytes, err := layerTar(files)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerBytes)), nil
	}, tarball.WithMediaType(types.DockerLayer))
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS, cf.Created = runtime.GOARCH, "linux", v1.Time{Time: epoch}
	cf.Config = v1.Config{
		User:       in.stage.User,
		Entrypoint: in.stage.Entrypoint,
		Env:        []string{"SSL_CERT_FILE=" + caBundlePath},
		WorkingDir: "/home/nonroot",
		Labels: map[string]string{
			"org.opencontainers.image.title":       "sops-webhook",
			"org.opencontainers.image.description": "Kubernetes mutating admission webhook that decrypts SOPS payloads in Secrets and ConfigMaps",
		},
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	return img, nil
}
