// Checks an idvault audit checkpoint with Go's golang.org/x/mod/sumdb
// packages, independent of the vault's own code: `note.Open` verifies the
// signed note with the verifier key `idvault audit public-key` prints, and
// `tlog` recomputes the RFC 6962 / RFC 9162 tree root from the raw leaf
// bytes (hex, one per line, in index order), which must be the signed one.
// (The vault's own proofs are checked by audit_proofs.py.)
//
// It first checks the test vectors docs/audit.md publishes (the signed
// checkpoint of the three-leaf tree, its inclusion and consistency proofs)
// the same way.
//
// usage: go run checkpoint.go VERIFIER_KEY_FILE CHECKPOINT_FILE LEAVES_HEX_FILE
package main

import (
	"bufio"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "FAIL: "+format+"\n", args...)
	os.Exit(1)
}

func hash(s string) tlog.Hash {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != tlog.HashSize {
		fail("bad vector %s", s)
	}
	var h tlog.Hash
	copy(h[:], b)
	return h
}

// The vectors of docs/audit.md, "Test vectors".
func docVectors() {
	const vkey = "idvault.example/audit+15f91fbe+AepKbGPinFIKvvVQexMuxfmVR3auvr57kkIe6mkURtIs"
	const signed = "idvault.example/audit\n3\nNmQuc8JUCrEh46a/lUWwokmCzYMOsT080Z3jzmwCHsE=\n\n" +
		"\u2014 idvault.example/audit Ffkfvj92a7Udfhy98CuD5NmgYQIynWANQM6p2x5guUIAon9BvLo6zvfTgBTv6xh2NYFz1+5RC6PWGADhoFx0aUF0Lg4=\n"
	v, err := note.NewVerifier(vkey)
	if err != nil {
		fail("doc verifier key: %v", err)
	}
	if _, err := note.Open([]byte(signed), note.VerifierList(v)); err != nil {
		fail("doc checkpoint: %v", err)
	}
	root := hash("36642e73c2540ab121e3a6bf9545b0a24982cd830eb13d3cd19de3ce6c021ec1")
	h0, h1, h2 := hash("022a6979e6dab7aa5ae4c3e5e45f7e977112a7e63593820dbec1ec738a24f93c"),
		hash("57eb35615d47f34ec714cacdf5fd74608a5e8e102724e80b24b287c0c27b6a31"),
		hash("597fcb31282d34654c200d3418fca5705c648ebf326ec73d8ddef11841f876d8")
	root2 := hash("b137985ff484fb600db93107c77b0365c80d78f5b429ded0fd97361d077999eb")
	for i, l := range []string{"a", "b", "c"} {
		if tlog.RecordHash([]byte(l)) != []tlog.Hash{h0, h1, h2}[i] {
			fail("doc leaf hash %d", i)
		}
	}
	checks := []error{
		tlog.CheckRecord(tlog.RecordProof{h1, h2}, 3, root, 0, h0),
		tlog.CheckRecord(tlog.RecordProof{root2}, 3, root, 2, h2),
		tlog.CheckTree(tlog.TreeProof{h1, h2}, 3, root, 1, h0),
		tlog.CheckTree(tlog.TreeProof{h2}, 3, root, 2, root2),
	}
	for i, err := range checks {
		if err != nil {
			fail("doc proof %d: %v", i, err)
		}
	}
	fmt.Println("x/mod/sumdb: docs/audit.md test vectors verify (signed checkpoint, 2 inclusion and 2 consistency proofs)")
}

func main() {
	docVectors()
	vkey, err := os.ReadFile(os.Args[1])
	if err != nil {
		fail("%v", err)
	}
	msg, err := os.ReadFile(os.Args[2])
	if err != nil {
		fail("%v", err)
	}
	v, err := note.NewVerifier(strings.TrimSpace(string(vkey)))
	if err != nil {
		fail("verifier key: %v", err)
	}
	n, err := note.Open(msg, note.VerifierList(v))
	if err != nil {
		fail("note.Open: %v", err)
	}
	lines := strings.SplitN(n.Text, "\n", 4)
	if len(lines) < 4 || lines[0] != v.Name() {
		fail("checkpoint text %q", n.Text)
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		fail("size: %v", err)
	}
	rootBytes, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(rootBytes) != tlog.HashSize {
		fail("root: %v", err)
	}
	var root tlog.Hash
	copy(root[:], rootBytes)

	f, err := os.Open(os.Args[3])
	if err != nil {
		fail("%v", err)
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	var stored []tlog.Hash
	reader := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(idx))
		for i, x := range idx {
			out[i] = stored[x]
		}
		return out, nil
	})
	count := int64(0)
	for sc.Scan() {
		leaf, err := hex.DecodeString(sc.Text())
		if err != nil {
			fail("leaf %d: %v", count, err)
		}
		hs, err := tlog.StoredHashes(count, leaf, reader)
		if err != nil {
			fail("%v", err)
		}
		stored = append(stored, hs...)
		count++
	}
	if err := sc.Err(); err != nil {
		fail("%v", err)
	}
	if count != size {
		fail("%d leaves given, the checkpoint says %d", count, size)
	}
	got, err := tlog.TreeHash(count, reader)
	if err != nil {
		fail("%v", err)
	}
	if size == 0 || got != root {
		fail("the leaves do not hash to the signed root")
	}
	fmt.Printf("x/mod/sumdb: checkpoint %s size %d verifies; its root recomputed from the stored leaves\n",
		lines[0], size)
}
