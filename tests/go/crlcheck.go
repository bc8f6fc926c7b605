// crlcheck checks CRLs with Go's crypto/x509: each CRL's signature against its issuer among
// CAS, and whether a certificate's serial is listed.
//
//	go run crlcheck.go CAS.pem CRLS.pem [CERT.pem]
//
// Prints one line per CRL ("<issuer>: signature ok, N entries") and, with CERT.pem, "revoked"
// or "not revoked" for its serial (in the CRL of its issuer). Exits 1 when a signature does
// not verify or a CRL has no issuer among CAS.
package main

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
)

func blocks(path, kind string) [][]byte {
	data, err := os.ReadFile(path)
	if err != nil {
		fmt.Println(err)
		os.Exit(2)
	}
	var out [][]byte
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return out
		}
		if block.Type == kind {
			out = append(out, block.Bytes)
		}
	}
}

func main() {
	if len(os.Args) < 3 {
		fmt.Println("usage: crlcheck CAS.pem CRLS.pem [CERT.pem]")
		os.Exit(2)
	}
	var cas []*x509.Certificate
	for _, der := range blocks(os.Args[1], "CERTIFICATE") {
		ca, err := x509.ParseCertificate(der)
		if err != nil {
			fmt.Println(err)
			os.Exit(2)
		}
		cas = append(cas, ca)
	}
	var leaf *x509.Certificate
	if len(os.Args) > 3 {
		der := blocks(os.Args[3], "CERTIFICATE")
		if len(der) == 0 {
			fmt.Println("no certificate in", os.Args[3])
			os.Exit(2)
		}
		var err error
		if leaf, err = x509.ParseCertificate(der[0]); err != nil {
			fmt.Println(err)
			os.Exit(2)
		}
	}
	failed := false
	revoked := false
	for _, der := range blocks(os.Args[2], "X509 CRL") {
		crl, err := x509.ParseRevocationList(der)
		if err != nil {
			fmt.Println("unparsable CRL:", err)
			os.Exit(1)
		}
		var issuer *x509.Certificate
		for _, ca := range cas {
			if string(ca.RawSubject) == string(crl.RawIssuer) {
				issuer = ca
			}
		}
		if issuer == nil {
			fmt.Printf("%s: no issuer among the CAs\n", crl.Issuer)
			failed = true
			continue
		}
		if err := crl.CheckSignatureFrom(issuer); err != nil {
			fmt.Printf("%s: signature does not verify: %v\n", crl.Issuer, err)
			failed = true
			continue
		}
		fmt.Printf("%s: signature ok, %d entries, number %s\n", crl.Issuer, len(crl.RevokedCertificates), crl.Number)
		if leaf != nil && string(leaf.RawIssuer) == string(crl.RawIssuer) {
			for _, entry := range crl.RevokedCertificates {
				if entry.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
					revoked = true
				}
			}
		}
	}
	if leaf != nil {
		if revoked {
			fmt.Println("revoked")
		} else {
			fmt.Println("not revoked")
		}
	}
	if failed {
		os.Exit(1)
	}
}
