// Command peer serves, with go-control-plane's SnapshotCache and ADS server, the
// resources meshext served in the same scenario (recorded by loadclient -record).
//
// Each workload of the scenario gets one snapshot, shared by all its replicas through
// a NodeHash that maps a node to its workload (namespace and WORKLOAD_NAME from the
// node metadata), which is how go-control-plane users serve fleets of identical
// proxies. Each resource type keeps the version string meshext gave it, so a change
// re-sends only the types whose content changed, as meshext does.
//
// POST /change?round=N sets, for every workload, the snapshot of phase N mod 2
// (phase 0: what the proxies got on connect, phase 1: after the first change) and
// answers once every SetSnapshot has returned.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"

	// Message types the recorded resources are decoded into.
	_ "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

type workload struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

type scenario struct {
	Workloads []workload `json:"workloads"`
}

type workloadHash struct{}

func (workloadHash) ID(node *core.Node) string {
	fields := node.GetMetadata().GetFields()
	return fields["NAMESPACE"].GetStringValue() + "/" + fields["WORKLOAD_NAME"].GetStringValue()
}

func main() {
	address := flag.String("address", "127.0.0.1:0", "xDS listen address (loopback)")
	control := flag.String("control", "127.0.0.1:0", "HTTP address for POST /change (loopback)")
	scenarioPath := flag.String("scenario", "", "scenario JSON file")
	recorded := flag.String("recorded", "", "directory written by loadclient -record")
	flag.Parse()
	log.SetFlags(log.Lmicroseconds)
	for _, a := range []string{*address, *control} {
		if !strings.HasPrefix(a, "127.0.0.1:") {
			log.Fatalf("%s: listen on 127.0.0.1 only", a)
		}
	}
	data, err := os.ReadFile(*scenarioPath)
	if err != nil {
		log.Fatal(err)
	}
	var sc scenario
	if err := json.Unmarshal(data, &sc); err != nil {
		log.Fatal(err)
	}
	keys := make([]string, len(sc.Workloads))
	phases := make([][2]*cachev3.Snapshot, len(sc.Workloads))
	for i, w := range sc.Workloads {
		keys[i] = w.Namespace + "/" + w.Name
		for phase := 0; phase < 2; phase++ {
			snap, err := loadSnapshot(filepath.Join(*recorded, strconv.Itoa(i), strconv.Itoa(phase)))
			if err != nil {
				log.Fatalf("workload %s phase %d: %v", keys[i], phase, err)
			}
			phases[i][phase] = snap
		}
	}
	ctx := context.Background()
	cache := cachev3.NewSnapshotCache(true, workloadHash{}, nil)
	setAll := func(phase int) error {
		for i, key := range keys {
			if err := cache.SetSnapshot(ctx, key, phases[i][phase]); err != nil {
				return err
			}
		}
		return nil
	}
	if err := setAll(0); err != nil {
		log.Fatal(err)
	}

	grpcServer := grpc.NewServer(
		grpc.MaxConcurrentStreams(1000000),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{PermitWithoutStream: true}),
	)
	discovery.RegisterAggregatedDiscoveryServiceServer(grpcServer, serverv3.NewServer(ctx, cache, nil))
	xdsListener, err := net.Listen("tcp", *address)
	if err != nil {
		log.Fatal(err)
	}
	controlListener, err := net.Listen("tcp", *control)
	if err != nil {
		log.Fatal(err)
	}
	http.HandleFunc("/change", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "POST only", http.StatusMethodNotAllowed)
			return
		}
		round, err := strconv.Atoi(r.URL.Query().Get("round"))
		if err != nil {
			http.Error(w, "round: "+err.Error(), http.StatusBadRequest)
			return
		}
		if err := setAll(round % 2); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	// The driver reads these two lines to learn the ports.
	fmt.Printf("xds %s\ncontrol %s\n", xdsListener.Addr(), controlListener.Addr())
	go func() { log.Fatal(http.Serve(controlListener, nil)) }()
	log.Fatal(grpcServer.Serve(xdsListener))
}

func loadSnapshot(dir string) (*cachev3.Snapshot, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	snap := &cachev3.Snapshot{}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		var resp discovery.DiscoveryResponse
		if err := proto.Unmarshal(data, &resp); err != nil {
			return nil, fmt.Errorf("%s: %w", e.Name(), err)
		}
		items := make([]types.Resource, 0, len(resp.Resources))
		for _, any := range resp.Resources {
			msg, err := any.UnmarshalNew()
			if err != nil {
				return nil, fmt.Errorf("%s: %w", e.Name(), err)
			}
			items = append(items, msg)
		}
		index := cachev3.GetResponseType(resp.TypeUrl)
		if index == types.UnknownType {
			return nil, fmt.Errorf("%s: unknown type %s", e.Name(), resp.TypeUrl)
		}
		snap.Resources[index] = cachev3.NewResources(resp.VersionInfo, items)
	}
	return snap, nil
}
