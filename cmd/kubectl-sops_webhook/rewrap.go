package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// unsafeKeyChars are what a Secret data key may not hold.
var unsafeKeyChars = regexp.MustCompile(`[^-._a-zA-Z0-9]`)

func (o *options) rewrapCmd(s streams) *cobra.Command {
	var (
		dropRetired, inPlace bool
	)
	cmd := &cobra.Command{
		Use:   "rewrap FILE -n NAMESPACE",
		Short: "Wrap FILE's data key for the current generation of its key, through the webhook",
		Long: "Sends FILE, a SOPS file, to the webhook in a server-side dry run of a Secret in NAMESPACE annotated\n" +
			annotationRewrap + ", and prints the answer: the same file, its data key also wrapped for the current\n" +
			"generation of the key that opens it. The webhook applies the same checks as for a decryption in\n" +
			"NAMESPACE, with your identity. Nothing is stored and no plaintext is returned.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			file, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			ns, err := o.namespace()
			if err != nil {
				return err
			}
			kube, err := o.client()
			if err != nil {
				return err
			}
			value := "true"
			if dropRetired {
				value = rewrapDropRetired
			}
			// The data key keeps the file's name: the webhook tells JSON
			// from binary files by it, as sops does.
			key := unsafeKeyChars.ReplaceAllString(filepath.Base(args[0]), "_")
			answer, err := kube.CoreV1().Secrets(ns).Create(cmd.Context(), &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{GenerateName: "sops-webhook-rewrap-", Annotations: map[string]string{annotationRewrap: value}},
				Data:       map[string][]byte{key: file},
			}, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			if err != nil {
				return err
			}
			out := answer.Data[key]
			if bytes.Equal(out, file) {
				fmt.Fprintf(s.errOut, "%s is unchanged: it is wrapped for the current generation already, or the webhook is not called for Secrets in namespace %s\n", args[0], ns)
			}
			if inPlace {
				return os.WriteFile(args[0], out, 0o600)
			}
			_, err = s.out.Write(out)
			return err
		},
	}
	cmd.Flags().BoolVar(&dropRetired, "drop-retired", false, "also remove the key's retired generations from the file")
	cmd.Flags().BoolVarP(&inPlace, "in-place", "i", false, "write the answer back to FILE instead of printing it")
	return cmd
}
