// Command demo runs sops-webhook for real on an embedded local control plane
// and installs the example chart (examples/webapp) with plain `helm install`
// and a SOPS-encrypted values file, printing each command and its output: a
// real kube-apiserver and etcd (envtest), the real webhook binary on loopback
// TLS, the project's MutatingWebhookConfiguration, a fresh age key, the real
// sops, helm and kubectl CLIs.
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
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
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
	tools, err := sopskit.Load()
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
		"HELM_CACHE_HOME=" + filepath.Join(work, "helm", "cache"),
		"HELM_CONFIG_HOME=" + filepath.Join(work, "helm", "config"),
		"HELM_DATA_HOME=" + filepath.Join(work, "helm", "data"),
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
	if err := cp.WaitForWebhook(ctx, "demo"); err != nil {
		return err
	}

	step("the example chart: examples/webapp (copied to %s)", work)
	if err := testbed.CopyFromRepo(work, "examples/webapp", "charts/sops-webhook-values"); err != nil {
		return err
	}
	sh.dir = filepath.Join(work, "examples", "webapp")
	if err := sh.run("ls templates && cat secrets.example.yaml"); err != nil {
		return err
	}

	step("encrypting the secret values and the chart's dotenv file with sops, for the webhook's public key only")
	r := strings.TrimSpace(recipient)
	if err := sh.run("sops encrypt --age " + r + " secrets.example.yaml > secrets.enc.yaml && head -8 secrets.enc.yaml | cut -c1-110 && echo ...\n" +
		"sops encrypt --age " + r + " --input-type dotenv --output-type dotenv files/app.env.example > files/app.enc.env"); err != nil {
		return err
	}

	step("plain helm install: no plugin, no key on this side")
	if err := sh.run("helm dependency build . >/dev/null && helm install webapp . -n demo -f secrets.enc.yaml"); err != nil {
		return err
	}

	step("what Helm sent and recorded: tokens only")
	if err := sh.run(`helm get manifest webapp -n demo | grep -m4 -E 'db-password|url:|port =|app.env' | cut -c1-110`); err != nil {
		return err
	}

	step("what the API server stored: the plaintext, decrypted in the cluster")
	if err := sh.run(`kubectl -n demo get secret webapp-credentials -o go-template='{{range $k, $v := .data}}{{$k}}: {{$v | base64decode}}{{"\n"}}{{end}}'
kubectl -n demo get secret webapp-app-config -o jsonpath='{.data.config\.yaml}' | base64 -d
kubectl -n demo get configmap webapp-settings -o jsonpath='{.data.settings\.ini}'
kubectl -n demo get secret webapp-env -o go-template='{{range $k, $v := .data}}{{$k}}: {{$v | base64decode}}{{"\n"}}{{end}}'
kubectl -n demo get secret webapp-credentials -o jsonpath='{.metadata.annotations}' && echo`); err != nil {
		return err
	}

	if keep {
		step("still running; in another shell:\n    export KUBECONFIG=%s\n    kubectl -n demo get secrets,configmaps\n    helm -n demo list\n  chart and encrypted values: %s\n  webhook logs: %s\n  Ctrl-C to stop", kubeconfig, sh.dir, logFile.Name())
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
