// x509verify checks a certificate chain with Go's crypto/x509, the verifier istio-agent uses.
//
//	go run x509verify.go ROOTS.pem CHAIN.pem
//
// CHAIN.pem holds the leaf first, then the intermediates. Prints "ok" and exits 0 when the leaf
// verifies to one of ROOTS (name constraints included), else prints the error and exits 1.
package main

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
)

func load(path string) []*x509.Certificate {
	data, err := os.ReadFile(path)
	if err != nil {
		fmt.Println(err)
		os.Exit(2)
	}
	var certificates []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return certificates
		}
		certificate, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			fmt.Println(err)
			os.Exit(2)
		}
		certificates = append(certificates, certificate)
	}
}

func main() {
	if len(os.Args) != 3 {
		fmt.Println("usage: x509verify ROOTS.pem CHAIN.pem")
		os.Exit(2)
	}
	roots := x509.NewCertPool()
	for _, root := range load(os.Args[1]) {
		roots.AddCert(root)
	}
	chain := load(os.Args[2])
	if len(chain) == 0 {
		fmt.Println("no certificate in", os.Args[2])
		os.Exit(2)
	}
	intermediates := x509.NewCertPool()
	for _, intermediate := range chain[1:] {
		intermediates.AddCert(intermediate)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: intermediates,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	fmt.Println("ok")
}
