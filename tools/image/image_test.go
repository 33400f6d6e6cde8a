package main

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/stretchr/testify/require"
)

// TestParseDockerfile reads the repository's Dockerfile, and refuses last
// stages the image could not reproduce.
func TestParseDockerfile(t *testing.T) {
	f, err := os.Open("../../Dockerfile")
	require.NoError(t, err)
	defer f.Close()
	st, err := parseDockerfile(f)
	require.NoError(t, err)
	require.Equal(t, runtimeStage{User: "65532:65532", Entrypoint: []string{"/webhook"}, BinaryPath: "/webhook"}, st)

	const build = "FROM golang AS build\nUSER 0:0\nENTRYPOINT [\"/other\"]\n"
	for _, tt := range []struct{ name, dockerfile, want string }{
		{"user by name", build + "FROM scratch\nCOPY --from=build /src/bin/webhook /webhook\nUSER nonroot\nENTRYPOINT [\"/webhook\"]\n", "numeric uid:gid"},
		{"shell-form entrypoint", build + "FROM scratch\nCOPY --from=build /src/bin/webhook /webhook\nUSER 1:1\nENTRYPOINT /webhook\n", "exec form"},
		{"binary not copied", build + "FROM scratch\nUSER 1:1\nENTRYPOINT [\"/webhook\"]\n", "does not COPY"},
		{"entrypoint elsewhere", build + "FROM scratch\nCOPY --from=build /src/bin/webhook /usr/bin/webhook\nUSER 1:1\nENTRYPOINT [\"/webhook\"]\n", "but the binary is copied to /usr/bin/webhook"},
		{"only the last stage counts", "FROM scratch\nCOPY --from=build /src/bin/webhook /webhook\nUSER 1:1\nENTRYPOINT [\"/webhook\"]\nFROM scratch\n", "USER"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseDockerfile(strings.NewReader(tt.dockerfile))
			require.ErrorContains(t, err, tt.want)
		})
	}
}

// TestImage writes an archive from a stand-in binary and reads it back as a
// container runtime would: the user and entrypoint of the Dockerfile, the
// binary executable and owned by root, the CA bundle, the non-root user's
// passwd entry, no shell, and the same digest for the same inputs.
func TestImage(t *testing.T) {
	in := inputs{
		stage:    runtimeStage{User: "65532:65532", Entrypoint: []string{"/webhook"}, BinaryPath: "/webhook"},
		binary:   []byte("\x7fELF stand-in for the static webhook binary"),
		caBundle: []byte("-----BEGIN CERTIFICATE-----\nstand-in\n-----END CERTIFICATE-----\n"),
	}
	out := filepath.Join(t.TempDir(), "image.tar")
	img, err := build(in)
	require.NoError(t, err)
	tag, err := name.NewTag("sops-webhook:test")
	require.NoError(t, err)
	require.NoError(t, tarball.WriteToFile(out, tag, img))

	loaded, err := tarball.ImageFromPath(out, &tag)
	require.NoError(t, err)
	cf, err := loaded.ConfigFile()
	require.NoError(t, err)
	require.Equal(t, "65532:65532", cf.Config.User)
	require.Equal(t, []string{"/webhook"}, cf.Config.Entrypoint)
	require.Equal(t, "linux", cf.OS)

	layers, err := loaded.Layers()
	require.NoError(t, err)
	require.Len(t, layers, 1)
	rc, err := layers[0].Uncompressed()
	require.NoError(t, err)
	defer rc.Close()
	entries := map[string]*tar.Header{}
	bodies := map[string]string{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		entries[h.Name] = h
		b, err := io.ReadAll(tr)
		require.NoError(t, err)
		bodies[h.Name] = string(b)
	}
	require.Contains(t, entries, "webhook")
	require.EqualValues(t, 0o755, entries["webhook"].Mode)
	require.Zero(t, entries["webhook"].Uid, "the binary is root's: the user cannot change it")
	require.Equal(t, string(in.binary), bodies["webhook"])
	require.Equal(t, string(in.caBundle), bodies["etc/ssl/certs/ca-certificates.crt"])
	require.Contains(t, bodies["etc/passwd"], "nonroot:x:65532:65532:")
	require.EqualValues(t, 0o1777, entries["tmp/"].Mode)
	for n := range entries {
		require.False(t, strings.HasPrefix(n, "bin/") || strings.HasSuffix(n, "/sh"), "a shell or bin folder in the image: %s", n)
	}

	again, err := build(in)
	require.NoError(t, err)
	d1, err := img.Digest()
	require.NoError(t, err)
	d2, err := again.Digest()
	require.NoError(t, err)
	require.Equal(t, d1, d2, "the same inputs give the same digest")
}
