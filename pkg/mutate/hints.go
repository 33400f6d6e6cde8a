package mutate

import "github.com/sops-webhook/sops-webhook/pkg/decrypt"

// hintHelper is where a chart's values index comes from.
const hintHelper = "render the " + AnnotationValues + ` annotation with {{ include "sops-webhook.values" . }} in the same template, from the same values`

// hintReencrypt is what to do about a file that fails authentication.
const hintReencrypt = "re-encrypt the file with sops, and change encrypted files only with `sops edit` or `sops set`"

// hints tells a user what to do about a payload refused for a reason, in
// the webhook's terms: its labels, annotations and chart helper. Package
// decrypt says what failed; a reason without a hint needs none.
var hints = map[decrypt.Reason]string{
	decrypt.ReasonNoKey:       "encrypt it for a key the webhook holds (see its config), or label the object " + LabelDecrypt + "=disabled to store it as is",
	decrypt.ReasonCorrupt:     hintReencrypt,
	decrypt.ReasonMAC:         hintReencrypt,
	decrypt.ReasonNoIndex:     hintHelper + "; a document payload must be the complete file sops wrote",
	decrypt.ReasonNotIndexed:  hintHelper + "; was the annotation rendered from other values than the token?",
	decrypt.ReasonBadIndex:    hintHelper,
	decrypt.ReasonRetired:     "move the file to the key's current generation before its generations retire (kubectl sops-webhook rewrap), or encrypt it again for a current recipient (kubectl sops-webhook recipients)",
	decrypt.ReasonTooMuchWork: "list only the keys that can open it, and encrypt the object's files with the same data key (one sops file, or a values file)",
}
