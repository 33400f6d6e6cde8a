// Command demo runs sops-webhook for real on an embedded local control plane
// and walks through one decryption, printing each command and its output:
// a real kube-apiserver and etcd (envtest), the real webhook binary on
// loopback TLS, the project's MutatingWebhookConfiguration, a fresh age key,
// the real sops and kubectl CLIs.
//
// With -keep it leaves everything running and prints how to use it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/sops-webhook/sops-webhook/test/testbed"
)

func main() {
	keep := flag.Bool("keep", false, "keep the control plane and webhook running until Ctrl-C")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, *keep)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func step(format string, a ...any) { fmt.Printf("\n==> "+format+"\n", a...) }

func run(ctx context.Context, keep bool) error {
	tools, err := testbed.Load()
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "sops-webhook-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	step("starting a local control plane: kube-apiserver + etcd (envtest)")
	cp, err := testbed.StartControlPlane()
	if err != nil {
		return err
	}
	defer cp.Stop()
	kubeconfig := filepath.Join(work, "kubeconfig")
	if err := cp.WriteKubeconfig(kubeconfig); err != nil {
		return err
	}

	sh := shell{dir: work, env: []string{
		"PATH=" + filepath.Dir(tools.Sops) + ":" + os.Getenv("PATH"),
		"HOME=" + work,
		"KUBECONFIG=" + kubeconfig,
	}}

	step("generating the webhook's age key (it never leaves the cluster)")
	if err := sh.run("age-keygen -o webhook.agekey 2>&1 && grep 'public key' webhook.agekey"); err != nil {
		return err
	}
	recipient, err := sh.output("age-keygen -y webhook.agekey")
	if err != nil {
		return err
	}
	config := fmt.Sprintf("apiVersion: sops-webhook.io/v1alpha1\nkind: Config\nkeys:\n  - name: demo\n    age: {identityFile: %s}\n",
		filepath.Join(work, "webhook.agekey"))
	if err := os.WriteFile(filepath.Join(work, "config.yaml"), []byte(config), 0o600); err != nil {
		return err
	}
	if err := sh.run("cat config.yaml"); err != nil {
		return err
	}

	step("building and starting the webhook, registering manifests/base/mutatingwebhookconfiguration.yaml")
	bin, err := testbed.BuildWebhook(work)
	if err != nil {
		return err
	}
	logFile, err := os.Create(filepath.Join(work, "webhook.log"))
	if err != nil {
		return err
	}
	defer logFile.Close()
	wh, err := testbed.StartWebhook(ctx, bin, filepath.Join(work, "config.yaml"), work, logFile)
	if err != nil {
		return err
	}
	defer wh.Stop()
	if err := cp.RegisterWebhook(ctx, wh.URL, wh.CABundle); err != nil {
		return err
	}
	fmt.Println("webhook serving at", wh.URL)

	step("opting a namespace in")
	if err := sh.run("kubectl create namespace demo && kubectl label namespace demo sops-webhook.io/decrypt=enabled"); err != nil {
		return err
	}

	step("encrypting a dotenv file with sops, for the webhook's public key only")
	if err := os.WriteFile(filepath.Join(work, "app.env"), []byte("DB_USER=app\nDB_PASSWORD=correct-horse-battery-staple\n"), 0o600); err != nil {
		return err
	}
	if err := sh.run("sops encrypt --age " + strings.TrimSpace(recipient) + " app.env > app.enc.env && rm app.env && cat app.enc.env"); err != nil {
		return err
	}

	step("creating a Secret from the ciphertext with plain kubectl")
	// The API server may take a moment to start calling a new webhook.
	if err := sh.run(`for i in $(seq 1 50); do
  kubectl -n demo create secret generic app --from-file=app.env=app.enc.env && break
  sleep 0.2
done`); err != nil {
		return err
	}

	step("what the API server stored")
	if err := sh.run(`kubectl -n demo get secret app -o jsonpath='{.metadata.annotations}' && echo`); err != nil {
		return err
	}
	if err := sh.run(`echo "--- sent (ciphertext, first lines):" && head -3 app.enc.env && echo "--- stored (decrypted in the cluster):" && kubectl -n demo get secret app -o jsonpath='{.data.app\.env}' | base64 -d`); err != nil {
		return err
	}

	if keep {
		step("still running; in another shell:\n    export KUBECONFIG=%s\n    kubectl -n demo get secret app -o yaml\n  webhook logs: %s\n  Ctrl-C to stop", kubeconfig, logFile.Name())
		<-ctx.Done()
	}
	step("stopping")
	return nil
}

// shell runs demo commands with bash, echoing each command and its output.
type shell struct {
	dir string
	env []string
}

func (s shell) run(script string) error {
	fmt.Println("$ " + strings.ReplaceAll(script, "\n", "\n  "))
	cmd := exec.Command("bash", "-o", "pipefail", "-c", script)
	cmd.Dir, cmd.Env = s.dir, s.env
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
	return cmd.Run()
}

func (s shell) output(script string) (string, error) {
	cmd := exec.Command("bash", "-o", "pipefail", "-c", script)
	cmd.Dir, cmd.Env = s.dir, s.env
	out, err := cmd.Output()
	return string(out), err
}
