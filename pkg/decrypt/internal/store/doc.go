// Package store is where the webhook parts ways with sops: how an encrypted
// document is parsed, weighed, decrypted value by value and written out.
// Package decrypt drives it; sops' key handling, tree, decryption order and
// MAC computation are used as they are.
//
// What is ours, each with a differential fuzz target against sops' own:
//
//   - the YAML loader (yamlload.go, FuzzLoadYAML): one parse, the same
//     first-document checks as sops' in linear time, no aliases;
//   - the YAML and JSON emitters (yamlemit.go, FuzzEmitYAML; jsonemit.go,
//     FuzzEmitJSON): the bytes sops' EmitPlainFile writes, in linear time
//     and memory;
//   - the value cipher (cipher.go, FuzzDocCipher): one AES-GCM per document
//     for the values in the form sops writes, sops' own cipher for anything
//     else;
//   - the weighing of a document by its structure (items.go) and the cap
//     on its nesting (depth.go), before and after parsing.
//
// What stays sops': the JSON, binary, dotenv and INI loaders, the binary,
// dotenv and INI emitters (Store says which step is whose), every
// encrypted emitter (EmitEncrypted, for a rewrap), and metadata
// extraction. The token grammar is package token's.
package store
