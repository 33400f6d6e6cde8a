// Package token is the grammar of the encrypted values sops writes,
// ENC[AES256_GCM,data:B64,iv:B64,tag:B64,type:NAME], shared by the
// document cipher, the structure weighing and the Helm values tokens. It
// scans and parses exactly that form and nothing looser; anything else is
// left to sops' own cipher, or refused. It never decrypts.
package token
