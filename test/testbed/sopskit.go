package testbed

import "github.com/sops-webhook/sops-webhook/test/testbed/sopskit"

// The test bed's parts that need no Kubernetes live in package sopskit;
// these names keep them in package testbed for its callers.
type (
	AgeKey     = sopskit.AgeKey
	PGPKey     = sopskit.PGPKey
	Recipients = sopskit.Recipients
	ValuesLeaf = sopskit.ValuesLeaf
	Tools      = sopskit.Tools
)

var (
	NewAgeKey         = sopskit.NewAgeKey
	NewPGPKey         = sopskit.NewPGPKey
	DataKeyOf         = sopskit.DataKeyOf
	ReplaceAgeStanza  = sopskit.ReplaceAgeStanza
	SopsEncrypt       = sopskit.SopsEncrypt
	SopsDecrypt       = sopskit.SopsDecrypt
	SopsEncryptGroups = sopskit.SopsEncryptGroups
	ValuesIndex       = sopskit.ValuesIndex
	ValuesLeaves      = sopskit.ValuesLeaves
	PlainOfSize       = sopskit.PlainOfSize
	Expansion         = sopskit.Expansion
	DocumentFiles     = sopskit.DocumentFiles
	RepoRoot          = sopskit.RepoRoot
	Load              = sopskit.Load
	Need              = sopskit.Need
)
