// Command etcd is the etcd server (go.etcd.io/etcd/server/v3), built as a
// plain module so that it needs no replace directives.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
