package main

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	flags := flag.NewFlagSet("image", flag.ContinueOnError)
	binary := flags.String("binary", "bin/webhook", "the static webhook binary (make build)")
	dockerfile := flags.String("dockerfile", "Dockerfile", "the Dockerfile whose last stage the image reproduces")
	caBundle := flags.String("ca-bundle", caBundlePath, "PEM CA bundle to ship (Debian's ca-certificates package)")
	tag := flags.String("tag", "sops-webhook:dev", "the image's name in the archive")
	out := flags.String("out", "bin/sops-webhook-image.tar", "the docker archive to write")
	check := flags.Bool("check", false, "only check that the Dockerfile's last stage can be reproduced")
	if err := flags.Parse(args); err != nil {
		return err
	}
	df, err := os.Open(*dockerfile)
	if err != nil {
		return err
	}
	defer df.Close()
	stage, err := parseDockerfile(df)
	if err != nil || *check {
		return err
	}
	in := inputs{stage: stage}
	if in.binary, err = os.ReadFile(*binary); err != nil {
		return fmt.Errorf("the webhook binary: %w (run make build)", err)
	}
	if in.caBundle, err = os.ReadFile(*caBundle); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("no CA bundle at %s: install Debian's ca-certificates package, or pass -ca-bundle", *caBundle)
	} else if err != nil {
		return err
	}
	img, err := build(in)
	if err != nil {
		return err
	}
	ref, err := name.NewTag(*tag)
	if err != nil {
		return fmt.Errorf("-tag: %w", err)
	}
	if err := tarball.WriteToFile(*out, ref, img); err != nil {
		return fmt.Errorf("write %s: %w", *out, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	st, err := os.Stat(*out)
	if err != nil {
		return err
	}
	fmt.Printf("wrote %s: %s, %s, %.1f MiB; import with: ctr -n k8s.io images import %s (or docker load -i %s)\n",
		*out, *tag, digest, float64(st.Size())/(1<<20), *out, *out)
	return nil
}
