// Fetches a SPIFFE bundle the way Istio's fetcher does (istio/istio 86c9f01fd73,
// pkg/spiffe/spiffe.go RetrieveSpiffeBundleRootCerts) and checks each key the way go-jose,
// which go-spiffe and Istio decode bundles with, checks a JWK that carries x5c: the key's
// parameters must be the certificate's public key. Standard library only (CI has no module
// proxy).
//
// usage: go run spiffebundle.go URL CA_FILE
//
//	URL:     https://host:port/<trust domain>
//	CA_FILE: PEM roots that verify the endpoint's serving certificate (https_web)
//
// Prints one JSON line: {"certificates": [sha256 hex...], "sequence": N, "refresh_hint": N}.
// Exits 1 with the reason on the first rule broken.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

type key struct {
	Use string   `json:"use"`
	Kty string   `json:"kty"`
	Crv string   `json:"crv"`
	X   string   `json:"x"`
	Y   string   `json:"y"`
	N   string   `json:"n"`
	E   string   `json:"e"`
	X5c []string `json:"x5c"`
}

type bundleDoc struct {
	Keys        []key  `json:"keys"`
	Sequence    uint64 `json:"spiffe_sequence"`
	RefreshHint int64  `json:"spiffe_refresh_hint"`
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

func b64url(text string) []byte {
	raw, err := base64.RawURLEncoding.DecodeString(text)
	if err != nil {
		fail("not base64url: %q", text)
	}
	return raw
}

// The key's parameters against the certificate's public key (go-jose's x5c check).
func sameKey(k key, cert *x509.Certificate) bool {
	switch pub := cert.PublicKey.(type) {
	case *ecdsa.PublicKey:
		curves := map[string]elliptic.Curve{"P-256": elliptic.P256(), "P-384": elliptic.P384(), "P-521": elliptic.P521()}
		curve, ok := curves[k.Crv]
		if k.Kty != "EC" || !ok || curve != pub.Curve {
			return false
		}
		x, y := new(big.Int).SetBytes(b64url(k.X)), new(big.Int).SetBytes(b64url(k.Y))
		size := (curve.Params().BitSize + 7) / 8
		return len(b64url(k.X)) == size && len(b64url(k.Y)) == size && x.Cmp(pub.X) == 0 && y.Cmp(pub.Y) == 0
	case *rsa.PublicKey:
		n, e := new(big.Int).SetBytes(b64url(k.N)), new(big.Int).SetBytes(b64url(k.E))
		return k.Kty == "RSA" && n.Cmp(pub.N) == 0 && e.Int64() == int64(pub.E)
	}
	return false
}

func main() {
	if len(os.Args) != 3 {
		fail("usage: spiffebundle URL CA_FILE")
	}
	endpoint, caFile := os.Args[1], os.Args[2]
	if !strings.HasPrefix(endpoint, "https://") {
		endpoint = "https://" + endpoint
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		fail("failed to split the SPIFFE bundle URL: %v", err)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		fail("%v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		fail("%s: no certificate", caFile)
	}
	client := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{
			ServerName: u.Hostname(),
			RootCAs:    pool,
			MinVersion: tls.VersionTLS12,
		}},
	}
	resp, err := client.Get(endpoint)
	if err != nil {
		fail("Calling %s failed with error: %v", endpoint, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fail("Calling %s failed with unexpected status: %v", endpoint, resp.StatusCode)
	}
	doc := new(bundleDoc)
	if err := json.NewDecoder(resp.Body).Decode(doc); err != nil {
		fail("failed to decode bundle: %v", err)
	}
	digests := []string{}
	for i, k := range doc.Keys {
		if k.Use != "x509-svid" {
			continue
		}
		if len(k.X5c) != 1 {
			fail("expected 1 certificate in x509-svid entry %d; got %d", i, len(k.X5c))
		}
		der, err := base64.StdEncoding.DecodeString(k.X5c[0])
		if err != nil {
			fail("entry %d: x5c is not base64: %v", i, err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			fail("entry %d: %v", i, err)
		}
		if !cert.IsCA {
			fail("entry %d: not a CA certificate", i)
		}
		if !sameKey(k, cert) {
			fail("entry %d: the JWK's parameters are not the certificate's key", i)
		}
		sum := sha256.Sum256(der)
		digests = append(digests, hex.EncodeToString(sum[:]))
	}
	if len(digests) == 0 {
		fail("does not provide a X509 SVID")
	}
	out, _ := json.Marshal(map[string]any{"certificates": digests, "sequence": doc.Sequence, "refresh_hint": doc.RefreshHint})
	fmt.Println(string(out))
}
