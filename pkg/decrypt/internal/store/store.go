package store

import (
	"fmt"

	"github.com/getsops/sops/v3"
	"github.com/getsops/sops/v3/config"
	"github.com/getsops/sops/v3/stores/dotenv"
	"github.com/getsops/sops/v3/stores/ini"
	sopsjson "github.com/getsops/sops/v3/stores/json"
	sopsyaml "github.com/getsops/sops/v3/stores/yaml"
)

// Store reads the encrypted documents of one format and writes their
// decrypted trees, as `sops decrypt` does with the settings it uses when no
// .sops.yaml configures any. Each of its two steps is either sops' own or
// ours, as doc.go lists; a Store holds only configuration, so one serves
// every request.
type Store struct {
	load func(doc []byte) (sops.Tree, error)
	emit func(branches sops.TreeBranches, encryptedSize int) ([]byte, error)
	// emitEncrypted is sops' own: a rewrap writes the encrypted tree back
	// as `sops updatekeys` does.
	emitEncrypted func(tree sops.Tree) ([]byte, error)
}

// Load parses an encrypted document into its tree and metadata. A YAML
// document with an alias fails with ErrAlias; other errors are the
// parser's and may quote the document.
func (s *Store) Load(doc []byte) (sops.Tree, error) { return s.load(doc) }

// Emit writes a decrypted tree as sops' store writes it. encryptedSize is
// the size of the encrypted document it came from, which bounds what a
// writer reserves; 0 when unknown.
func (s *Store) Emit(branches sops.TreeBranches, encryptedSize int) ([]byte, error) {
	return s.emit(branches, encryptedSize)
}

// EmitEncrypted writes an encrypted tree and its metadata as sops' store
// does, which is what `sops updatekeys` writes after changing the keys.
func (s *Store) EmitEncrypted(tree sops.Tree) ([]byte, error) { return s.emitEncrypted(tree) }

// The stores of the five document formats.
var (
	YAML, JSON, Binary, Dotenv, INI = newStores()
)

func newStores() (yml, jsn, binary, env, in *Store) {
	c := config.NewStoresConfig()
	ye, err := newYAMLEmitter(&c.YAML)
	if err != nil {
		// sops' default settings are valid; this is a programming error.
		panic(fmt.Sprintf("store: sops' default YAML settings: %v", err))
	}
	indent, err := jsonIndent(c.JSON.Indent)
	if err != nil {
		panic(fmt.Sprintf("store: sops' default JSON settings: %v", err))
	}
	sy := sopsyaml.NewStore(&c.YAML)
	sj := sopsjson.NewStore(&c.JSON)
	sb := sopsjson.NewBinaryStore(&c.JSONBinary)
	sd := dotenv.NewStore(&c.Dotenv)
	si := ini.NewStore(&c.INI)
	whole := func(emit func(sops.TreeBranches) ([]byte, error)) func(sops.TreeBranches, int) ([]byte, error) {
		return func(b sops.TreeBranches, _ int) ([]byte, error) { return emit(b) }
	}
	yml = &Store{load: loadYAMLFile, emit: whole(ye.emit), emitEncrypted: sy.EmitEncryptedFile}
	jsn = &Store{load: sj.LoadEncryptedFile, emit: func(b sops.TreeBranches, n int) ([]byte, error) { return emitJSON(b, indent, n) }, emitEncrypted: sj.EmitEncryptedFile}
	binary = &Store{load: sb.LoadEncryptedFile, emit: whole(sb.EmitPlainFile), emitEncrypted: sb.EmitEncryptedFile}
	env = &Store{load: sd.LoadEncryptedFile, emit: whole(sd.EmitPlainFile), emitEncrypted: sd.EmitEncryptedFile}
	in = &Store{load: si.LoadEncryptedFile, emit: whole(si.EmitPlainFile), emitEncrypted: si.EmitEncryptedFile}
	return
}
