// Command oci-registry serves an in-memory OCI distribution registry with the
// OCI 1.1 referrers API over TLS on a loopback address, for tests.
//
// Usage:
//
//	oci-registry -listen 127.0.0.1:PORT -cert server.crt -key server.key
//
// It prints "listening on ADDR" once the socket is open and serves until it is
// sent SIGTERM or SIGINT. Only loopback addresses are accepted. Blobs and
// manifests live in memory and vanish with the process.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "loopback address to listen on")
	certFile := flag.String("cert", "", "PEM server certificate (required)")
	keyFile := flag.String("key", "", "PEM server private key (required)")
	verbose := flag.Bool("verbose", false, "log every request to stderr")
	flag.Parse()
	if err := run(*listen, *certFile, *keyFile, *verbose); err != nil {
		fmt.Fprintf(os.Stderr, "oci-registry: %v\n", err)
		os.Exit(1)
	}
}

func run(listen, certFile, keyFile string, verbose bool) error {
	if certFile == "" || keyFile == "" {
		return errors.New("-cert and -key are required: the registry serves TLS only")
	}
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("-listen %q: %w", listen, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("-listen %q: only loopback IP addresses are served", listen)
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("loading the certificate: %w", err)
	}
	logger := log.New(io.Discard, "", 0)
	if verbose {
		logger = log.New(os.Stderr, "oci-registry ", log.LstdFlags)
	}
	handler := registry.New(registry.Logger(logger), registry.WithReferrersSupport(true))
	listener, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	server := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{pair},
			MinVersion:   tls.VersionTLS12,
		},
	}
	fmt.Printf("listening on %s\n", listener.Addr())
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- server.ServeTLS(listener, "", "") }()
	select {
	case err := <-done:
		return err
	case <-stop:
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return server.Shutdown(ctx)
	}
}
