// Command demo runs sops-webhook for real on an embedded local control plane
// and tells its story, printing each command and its output: the webhook
// generates its key in the cluster; `kubectl sops-webhook` publishes its
// recipient and .sops.yaml rules; the example chart (examples/webapp) is
// encrypted with sops and installed with plain `helm install`; then the key
// is rotated, the files rewrapped through the webhook, and `helm upgrade`
// moves every object to the new generation. A real kube-apiserver and etcd
// (envtest), the real webhook binary on loopback TLS, the project's
// MutatingWebhookConfiguration, the real sops, helm and kubectl CLIs and the
// kubectl plugin; no private key ever leaves the cluster.
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

	bin, err := testbed.BuildWebhook(work)
	if err != nil {
		return err
	}
	plugin, err := testbed.BuildPlugin(work)
	if err != nil {
		return err
	}
	sh := shell{dir: work, env: []string{
		// kubectl finds the plugin, kubectl-sops_webhook, on the PATH.
		"PATH=" + filepath.Dir(plugin) + ":" + filepath.Dir(tools.Sops) + ":" + os.Getenv("PATH"),
		"HELM_CACHE_HOME=" + filepath.Join(work, "helm", "cache"),
		"HELM_CONFIG_HOME=" + filepath.Join(work, "helm", "config"),
		"HELM_DATA_HOME=" + filepath.Join(work, "helm", "data"),
		"HOME=" + work,
		"KUBECONFIG=" + kubeconfig,
	}}

	step("1. install: a config whose key the webhook generates itself")
	if err := sh.run("kubectl create namespace sops-webhook && kubectl create namespace demo && kubectl label namespace demo sops-webhook.io/decrypt=enabled"); err != nil {
		return err
	}
	config := `apiVersion: sops-webhook.io/v1alpha1
kind: Config
keys:
  - name: demo
    generate: {}
policy:
  - keys: [demo]
    namespaces: [demo]
    kinds: [Secret, ConfigMap]
`
	if err := os.WriteFile(filepath.Join(work, "config.yaml"), []byte(config), 0o600); err != nil {
		return err
	}
	if err := sh.run("cat config.yaml"); err != nil {
		return err
	}
	logFile, err := os.Create(filepath.Join(work, "webhook.log"))
	if err != nil {
		return err
	}
	defer logFile.Close()
	wh, err := testbed.StartWebhookWith(ctx, bin, testbed.WebhookOptions{
		Config: filepath.Join(work, "config.yaml"), WorkDir: work, Log: logFile,
		Args: []string{"--kubeconfig", kubeconfig, "--namespace", "sops-webhook", "--config-check-interval", "1s"},
	})
	if err != nil {
		return err
	}
	defer wh.Stop()
	if err := cp.RegisterWebhook(ctx, wh.URL, wh.CABundle); err != nil {
		return err
	}
	if err := cp.WaitForWebhook(ctx, "demo"); err != nil {
		return err
	}
	fmt.Println("webhook serving at", wh.URL, "with manifests/base/mutatingwebhookconfiguration.yaml")
	step("the key was born in the cluster: one Secret holds it, nothing else does")
	if err := sh.run("kubectl -n sops-webhook get secret sops-webhook-generated-keys\ngrep -o '\"msg\":\"generated key\".*' " + logFile.Name() + " | cut -c1-120"); err != nil {
		return err
	}

	step("2. a chart author asks for the recipient, and the .sops.yaml rules, then encrypts with sops")
	if err := sh.run("kubectl sops-webhook recipients -n demo"); err != nil {
		return err
	}
	if err := testbed.CopyFromRepo(work, "examples/webapp", "charts/sops-webhook-values"); err != nil {
		return err
	}
	sh.dir = filepath.Join(work, "examples", "webapp")
	if err := sh.run(`sops encrypt --age "$(kubectl sops-webhook recipients -n demo --age)" --input-type dotenv --output-type dotenv files/app.env.example > files/app.enc.env` + "\n" +
		"kubectl sops-webhook sops-config > .sops.yaml && cat .sops.yaml\n" +
		"mkdir -p demo && cp secrets.example.yaml demo/secrets.enc.yaml && sops encrypt -i demo/secrets.enc.yaml\n" +
		"head -8 demo/secrets.enc.yaml | cut -c1-110 && echo ..."); err != nil {
		return err
	}

	step("3. plain helm install: no plugin, no key on this side")
	if err := sh.run("helm dependency build . >/dev/null && helm install webapp . -n demo -f demo/secrets.enc.yaml"); err != nil {
		return err
	}
	step("what Helm sent and recorded: tokens only")
	if err := sh.run(`helm get manifest webapp -n demo | grep -m4 -E 'db-password|url:|port =|app.env' | cut -c1-110`); err != nil {
		return err
	}
	step("what the API server stored: the plaintext, decrypted in the cluster by generation 1")
	if err := sh.run(`kubectl -n demo get secret webapp-credentials -o go-template='{{range $k, $v := .data}}{{$k}}: {{$v | base64decode}}{{"\n"}}{{end}}'
kubectl -n demo get secret webapp-app-config -o jsonpath='{.data.config\.yaml}' | base64 -d
kubectl -n demo get configmap webapp-settings -o jsonpath='{.data.settings\.ini}'
kubectl -n demo get secret webapp-env -o go-template='{{range $k, $v := .data}}{{$k}}: {{$v | base64decode}}{{"\n"}}{{end}}'
kubectl -n demo get secret webapp-credentials -o jsonpath='{.metadata.annotations}' && echo`); err != nil {
		return err
	}

	step("4. rotate: a new generation becomes current; the first one keeps decrypting")
	if err := sh.run("kubectl sops-webhook rotate demo && until kubectl sops-webhook keys | grep -q '^demo  *2 '; do sleep 0.5; done; kubectl sops-webhook keys"); err != nil {
		return err
	}
	step("rewrap the files through the webhook: same values, same MAC, wrapped for generation 2 too; no private key here")
	if err := sh.run("cp demo/secrets.enc.yaml before.enc.yaml\n" +
		"kubectl sops-webhook rewrap demo/secrets.enc.yaml -n demo -i && kubectl sops-webhook rewrap files/app.enc.env -n demo -i\n" +
		"diff <(grep -c 'recipient:' before.enc.yaml) <(grep -c 'recipient:' demo/secrets.enc.yaml) || true\n" +
		"diff <(grep -o 'ENC\\[[^]]*\\]' before.enc.yaml) <(grep -o 'ENC\\[[^]]*\\]' demo/secrets.enc.yaml) && echo 'values and MAC unchanged'; rm -f before.enc.yaml"); err != nil {
		return err
	}
	step("helm upgrade: every object is decrypted by generation 2 now, so generation 1 can retire")
	if err := sh.run("helm upgrade webapp . -n demo -f demo/secrets.enc.yaml >/dev/null && kubectl -n demo get secret webapp-credentials -o jsonpath='{.metadata.annotations.sops-webhook\\.io/keys}' && echo\n" +
		"kubectl sops-webhook keys && kubectl sops-webhook retire demo@1\n" +
		"until kubectl sops-webhook keys | grep -q '^demo  *1  *retired'; do sleep 0.5; done; kubectl sops-webhook keys"); err != nil {
		return err
	}

	if keep {
		step("still running; in another shell:\n    export KUBECONFIG=%s PATH=%s:$PATH\n    kubectl -n demo get secrets,configmaps\n    kubectl sops-webhook keys\n    helm -n demo list\n  chart and encrypted values: %s\n  webhook logs: %s\n  Ctrl-C to stop", kubeconfig, filepath.Dir(plugin), sh.dir, logFile.Name())
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
