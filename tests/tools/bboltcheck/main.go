// bboltcheck: Go's bbolt as the judge of bbolt files in the tests.
//
//	bboltcheck check FILE   runs bbolt's consistency check (tx.Check)
//	bboltcheck dump FILE    prints every bucket, key and value, in hex
//
// Built in GOPATH mode against Debian's golang-github-coreos-bbolt-dev.
package main

import (
	"encoding/hex"
	"fmt"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: bboltcheck check|dump FILE")
		os.Exit(2)
	}
	db, err := bolt.Open(os.Args[2], 0400, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		switch os.Args[1] {
		case "check":
			n := 0
			for e := range tx.Check() {
				fmt.Println(e)
				n++
			}
			if n > 0 {
				return fmt.Errorf("%d errors found", n)
			}
			fmt.Println("OK")
			return nil
		case "dump":
			return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
				fmt.Printf("bucket %s\n", name)
				return b.ForEach(func(k, v []byte) error {
					fmt.Printf("%s %s\n", hex.EncodeToString(k), hex.EncodeToString(v))
					return nil
				})
			})
		}
		return fmt.Errorf("unknown command %q", os.Args[1])
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
