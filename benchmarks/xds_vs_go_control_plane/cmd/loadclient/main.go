// Command loadclient simulates N Envoy sidecars against one xDS server and measures
// how long a configuration change takes to be ACKed by all of them.
//
// Each simulated sidecar has its own gRPC connection and one ADS stream
// (state of the world). Like Envoy, it subscribes to clusters and listeners as
// wildcards, reads the names of the extension configs (ECDS) out of the HTTP
// connection manager of every listener it receives, subscribes to those names, and
// ACKs every response. The node is sent in the first request only, as Envoy does
// with set_node_on_first_message_only.
//
// A round changes the configuration through a trigger (an edit of a file in the
// server's config folder, or an HTTP POST to the peer server), and lasts until every
// sidecar has ACKed an extension-config response whose version differs from the one
// it held when the round started. The server's CPU time (utime+stime from
// /proc/<pid>/stat) and resident memory (VmRSS), summed over the server process and
// its descendants (worker processes), are sampled around each round.
//
// The result is one JSON object on stdout.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	status "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

const (
	clusterType   = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	listenerType  = "type.googleapis.com/envoy.config.listener.v3.Listener"
	extensionType = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
	clockTicks    = 100 // USER_HZ on Linux
	// Envoy's default HTTP/2 flow-control windows (initial_stream_window_size and
	// initial_connection_window_size, 256 MiB), which its gRPC client to the xDS
	// server uses. Setting them also keeps grpc-go from sending a bandwidth-probe
	// PING after the data it receives, which Envoy never sends.
	envoyWindow = 256 << 20
)

// Workload is one entry of the scenario file written by run.py.
type Workload struct {
	Namespace   string            `json:"namespace"`
	Name        string            `json:"name"`
	Labels      map[string]string `json:"labels"`
	Replicas    int               `json:"replicas"`
	InboundPort int               `json:"inbound_port"`
	App         string            `json:"app"`
}

type Scenario struct {
	Workloads []Workload `json:"workloads"`
}

type sidecar struct {
	index    int
	workload int
	node     *core.Node
	record   bool // the first replica of each workload records what it receives

	mu        sync.Mutex
	versions  map[string]string
	nonces    map[string]string
	ecdsNames []string
	received  map[string]*anypb.Any            // extension configs held, by name
	raw       map[string]map[string]*anypb.Any // when recording: resources held per type, by name
	ready     bool
	roundBase string
	roundDone bool
}

type client struct {
	sidecars []*sidecar
	opts     options

	readyCount atomic.Int64
	allReady   chan struct{}
	readyOnce  sync.Once

	roundMu    sync.Mutex
	roundOpen  bool
	roundStart time.Time
	doneCount  int
	roundAll   chan struct{}
	latencies  []float64
	nacks      atomic.Int64
	streamErrs atomic.Int64
	lastErr    atomic.Value
}

type options struct {
	target          string
	scenario        string
	rounds          int
	gap             time.Duration
	settle          time.Duration
	timeout         time.Duration
	triggerFile     string
	triggerTemplate string
	triggerURL      string
	serverPID       int
	record          string
	dialConcurrency int
}

func main() {
	var o options
	flag.StringVar(&o.target, "target", "127.0.0.1:15010", "xDS server address (loopback)")
	flag.StringVar(&o.scenario, "scenario", "", "scenario JSON file")
	flag.IntVar(&o.rounds, "rounds", 10, "number of changes")
	flag.DurationVar(&o.gap, "gap", time.Second, "pause between a round's end and the next change")
	flag.DurationVar(&o.settle, "settle", time.Second, "CPU is counted until this long after the last ACK")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Minute, "give up after this long in total")
	flag.StringVar(&o.triggerFile, "trigger-file", "", "file rewritten for each change")
	flag.StringVar(&o.triggerTemplate, "trigger-template", "", "template of that file; {{ROUND}} is replaced")
	flag.StringVar(&o.triggerURL, "trigger-url", "", "URL POSTed with ?round=N for each change")
	flag.IntVar(&o.serverPID, "server-pid", 0, "pid of the server process, for CPU and RSS")
	flag.StringVar(&o.record, "record", "", "directory to record each workload's responses into")
	flag.IntVar(&o.dialConcurrency, "dial-concurrency", 256, "streams being opened at once")
	flag.Parse()
	log.SetFlags(log.Lmicroseconds)
	if o.scenario == "" || (o.triggerFile == "") == (o.triggerURL == "") {
		log.Fatal("need -scenario and exactly one of -trigger-file and -trigger-url")
	}
	if !strings.HasPrefix(o.target, "127.0.0.1:") {
		log.Fatal("-target must be a loopback address (127.0.0.1:port)")
	}
	result, err := run(o)
	if err != nil {
		log.Fatal(err)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	_ = enc.Encode(result)
}

func readScenario(path string) (*Scenario, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s Scenario
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &s, nil
}

func nodeOf(w Workload, replica int) (*core.Node, error) {
	labels := map[string]any{}
	for k, v := range w.Labels {
		labels[k] = v
	}
	meta, err := structpb.NewStruct(map[string]any{
		"NAMESPACE":       w.Namespace,
		"LABELS":          labels,
		"WORKLOAD_NAME":   w.Name,
		"PROXY_KIND":      "sidecar",
		"INBOUND_PORT":    strconv.Itoa(w.InboundPort),
		"INBOUND_ADDRESS": "0.0.0.0",
		"APP_ADDRESS":     w.App,
	})
	if err != nil {
		return nil, err
	}
	pod := fmt.Sprintf("%s-%d", w.Name, replica)
	return &core.Node{
		Id:       fmt.Sprintf("sidecar~%s.%s", pod, w.Namespace),
		Cluster:  w.Name + "." + w.Namespace,
		Metadata: meta,
	}, nil
}

func run(o options) (map[string]any, error) {
	scenario, err := readScenario(o.scenario)
	if err != nil {
		return nil, err
	}
	c := &client{opts: o, allReady: make(chan struct{})}
	for wi, w := range scenario.Workloads {
		for r := 0; r < w.Replicas; r++ {
			node, err := nodeOf(w, r)
			if err != nil {
				return nil, err
			}
			c.sidecars = append(c.sidecars, &sidecar{
				index: len(c.sidecars), workload: wi, node: node, record: o.record != "" && r == 0,
				versions: map[string]string{}, nonces: map[string]string{},
				received: map[string]*anypb.Any{}, raw: map[string]map[string]*anypb.Any{},
			})
		}
	}
	n := len(c.sidecars)
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()

	cpu0, _ := cpuSeconds(o.serverPID)
	self := os.Getpid()
	clientCPU0, _ := cpuSeconds(self)
	rssIdle, _ := rssMiB(o.serverPID)
	start := time.Now()
	sem := make(chan struct{}, o.dialConcurrency)
	var wg sync.WaitGroup
	for _, sc := range c.sidecars {
		wg.Add(1)
		go func(sc *sidecar) {
			defer wg.Done()
			c.runSidecar(ctx, sc, sem)
		}(sc)
	}
	select {
	case <-c.allReady:
	case <-ctx.Done():
		return nil, fmt.Errorf("only %d of %d sidecars got their configuration before the timeout (stream errors %d, last: %v)",
			c.readyCount.Load(), n, c.streamErrs.Load(), c.lastErr.Load())
	}
	connectSeconds := time.Since(start).Seconds()
	cpuConnect, _ := cpuSeconds(o.serverPID)
	clientCPUConnect, _ := cpuSeconds(self)
	log.Printf("%d sidecars connected and ACKed in %.2fs", n, connectSeconds)
	if o.record != "" {
		if err := c.dump(0); err != nil {
			return nil, err
		}
	}

	// Idle CPU of the server with every sidecar connected.
	time.Sleep(o.gap)
	idleA, _ := cpuSeconds(o.serverPID)
	time.Sleep(2 * time.Second)
	idleB, _ := cpuSeconds(o.serverPID)
	rssConnected, _ := rssMiB(o.serverPID)

	var clientCPUPerRound []float64
	var allLatency, cpuPerRound, perProxyP50, perProxyP99, rssRounds []float64
	for round := 1; round <= o.rounds; round++ {
		c.openRound()
		before, _ := cpuSeconds(o.serverPID)
		clientBefore, _ := cpuSeconds(self)
		t0 := time.Now()
		c.setRoundStart(t0)
		if err := trigger(o, round); err != nil {
			return nil, err
		}
		select {
		case <-c.roundAll:
		case <-ctx.Done():
			return nil, fmt.Errorf("round %d: only %d of %d sidecars ACKed the change before the timeout", round, c.doneCountNow(), n)
		}
		elapsed := time.Since(t0).Seconds()
		lat := c.closeRound()
		time.Sleep(o.settle)
		after, _ := cpuSeconds(o.serverPID)
		clientAfter, _ := cpuSeconds(self)
		clientCPUPerRound = append(clientCPUPerRound, clientAfter-clientBefore)
		rss, _ := rssMiB(o.serverPID)
		allLatency = append(allLatency, elapsed)
		cpuPerRound = append(cpuPerRound, after-before)
		rssRounds = append(rssRounds, rss)
		sort.Float64s(lat)
		perProxyP50 = append(perProxyP50, quantile(lat, 0.5))
		perProxyP99 = append(perProxyP99, quantile(lat, 0.99))
		log.Printf("round %d: all %d ACKed in %.3fs, server CPU %.3fs, RSS %.0f MiB", round, n, elapsed, after-before, rss)
		if o.record != "" && round == 1 {
			if err := c.dump(1); err != nil {
				return nil, err
			}
		}
		if round < o.rounds {
			time.Sleep(o.gap)
		}
	}
	cancel()
	wg.Wait()
	sortedLat := append([]float64(nil), allLatency...)
	sort.Float64s(sortedLat)
	sortedCPU := append([]float64(nil), cpuPerRound...)
	sort.Float64s(sortedCPU)
	maxRSS := rssConnected
	for _, r := range rssRounds {
		maxRSS = math.Max(maxRSS, r)
	}
	return map[string]any{
		"proxies":                  n,
		"workloads":                len(scenario.Workloads),
		"rounds":                   o.rounds,
		"connect_all_s":            round3(connectSeconds),
		"server_cpu_connect_s":     round3(cpuConnect - cpu0),
		"server_cpu_idle_per_s":    round3((idleB - idleA) / 2),
		"all_acked_s":              roundAll(allLatency),
		"all_acked_p50_s":          round3(quantile(sortedLat, 0.5)),
		"all_acked_p99_s":          round3(quantile(sortedLat, 0.99)),
		"per_proxy_p50_s":          round3(median(perProxyP50)),
		"per_proxy_p99_s":          round3(median(perProxyP99)),
		"server_cpu_per_change_s":  round3(quantile(sortedCPU, 0.5)),
		"server_cpu_s":             roundAll(cpuPerRound),
		"server_cpu_window_settle": o.settle.Seconds(),
		"client_cpu_connect_s":     round3(clientCPUConnect - clientCPU0),
		"client_cpu_per_change_s":  round3(median(clientCPUPerRound)),
		"server_rss_idle_mib":      round1(rssIdle),
		"server_rss_connected_mib": round1(rssConnected),
		"server_rss_max_mib":       round1(maxRSS),
		"nacks":                    c.nacks.Load(),
		"stream_errors":            c.streamErrs.Load(),
	}, nil
}

func (c *client) runSidecar(ctx context.Context, sc *sidecar, sem chan struct{}) {
	select {
	case sem <- struct{}{}:
	case <-ctx.Done():
		return
	}
	released := false
	release := func() {
		if !released {
			released = true
			<-sem
		}
	}
	defer release()
	conn, err := grpc.NewClient(c.opts.target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)),
		grpc.WithReadBufferSize(16<<10), grpc.WithWriteBufferSize(16<<10),
		grpc.WithInitialWindowSize(envoyWindow), grpc.WithInitialConnWindowSize(envoyWindow))
	if err != nil {
		c.fail(err)
		return
	}
	defer conn.Close()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		c.fail(err)
		return
	}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: sc.node, TypeUrl: clusterType}); err != nil {
		c.fail(err)
		return
	}
	if err := stream.Send(&discovery.DiscoveryRequest{TypeUrl: listenerType}); err != nil {
		c.fail(err)
		return
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			if ctx.Err() == nil {
				c.fail(err)
			}
			return
		}
		if err := c.handle(sc, stream, resp); err != nil {
			c.fail(err)
			return
		}
		if sc.ready {
			release() // let the next streams open once this one has its configuration
		}
	}
}

func (c *client) fail(err error) {
	c.streamErrs.Add(1)
	c.lastErr.Store(err.Error())
}

func (c *client) handle(sc *sidecar, stream discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient, resp *discovery.DiscoveryResponse) error {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if resp.TypeUrl == extensionType {
		for _, res := range resp.Resources {
			var tec core.TypedExtensionConfig
			if err := res.UnmarshalTo(&tec); err != nil {
				return err
			}
			sc.received[tec.Name] = res
		}
	}
	if sc.record {
		if resp.TypeUrl == extensionType {
			sc.raw[resp.TypeUrl] = sc.received
		} else {
			byName := map[string]*anypb.Any{}
			for i, res := range resp.Resources {
				byName[strconv.Itoa(i)] = res
			}
			sc.raw[resp.TypeUrl] = byName
		}
	}
	ack := &discovery.DiscoveryRequest{TypeUrl: resp.TypeUrl, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce}
	var subscribe []string
	switch resp.TypeUrl {
	case listenerType:
		names, err := ecdsNames(resp)
		if err != nil {
			// Envoy would NACK; so do we, keeping the previous version.
			c.nacks.Add(1)
			ack.VersionInfo = sc.versions[listenerType]
			ack.ErrorDetail = &status.Status{Code: 3, Message: err.Error()}
			return stream.Send(ack)
		}
		if !equal(names, sc.ecdsNames) {
			sc.ecdsNames = names
			subscribe = names
		}
	case extensionType:
		ack.ResourceNames = sc.ecdsNames
	}
	sc.versions[resp.TypeUrl] = resp.VersionInfo
	sc.nonces[resp.TypeUrl] = resp.Nonce
	if err := stream.Send(ack); err != nil {
		return err
	}
	if subscribe != nil {
		if err := stream.Send(&discovery.DiscoveryRequest{
			TypeUrl: extensionType, ResourceNames: subscribe,
			VersionInfo: sc.versions[extensionType], ResponseNonce: sc.nonces[extensionType],
		}); err != nil {
			return err
		}
	}
	if !sc.ready {
		_, haveC := sc.versions[clusterType]
		_, haveL := sc.versions[listenerType]
		haveE := true
		for _, name := range sc.ecdsNames {
			_, ok := sc.received[name]
			haveE = haveE && ok
		}
		if haveC && haveL && haveE {
			sc.ready = true
			if int(c.readyCount.Add(1)) == len(c.sidecars) {
				c.readyOnce.Do(func() { close(c.allReady) })
			}
		}
	}
	if resp.TypeUrl == extensionType {
		c.noteExtensionAck(sc, resp.VersionInfo)
	}
	return nil
}

func ecdsNames(resp *discovery.DiscoveryResponse) ([]string, error) {
	var names []string
	for _, any := range resp.Resources {
		var l listener.Listener
		if err := any.UnmarshalTo(&l); err != nil {
			return nil, err
		}
		for _, chain := range l.FilterChains {
			for _, f := range chain.Filters {
				tc := f.GetTypedConfig()
				if tc == nil || !strings.HasSuffix(tc.TypeUrl, "HttpConnectionManager") {
					continue
				}
				var m hcm.HttpConnectionManager
				if err := tc.UnmarshalTo(&m); err != nil {
					return nil, err
				}
				for _, hf := range m.HttpFilters {
					if hf.GetConfigDiscovery() != nil {
						names = append(names, hf.Name)
					}
				}
			}
		}
	}
	sort.Strings(names)
	return names, nil
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func (c *client) openRound() {
	c.roundMu.Lock()
	defer c.roundMu.Unlock()
	c.roundOpen = false
	c.doneCount = 0
	c.latencies = c.latencies[:0]
	c.roundAll = make(chan struct{})
	for _, sc := range c.sidecars {
		sc.mu.Lock()
		sc.roundBase = sc.versions[extensionType]
		sc.roundDone = false
		sc.mu.Unlock()
	}
}

func (c *client) setRoundStart(t time.Time) {
	c.roundMu.Lock()
	defer c.roundMu.Unlock()
	c.roundStart = t
	c.roundOpen = true
}

// noteExtensionAck runs with sc.mu held.
func (c *client) noteExtensionAck(sc *sidecar, version string) {
	if sc.roundDone || version == sc.roundBase {
		return
	}
	c.roundMu.Lock()
	defer c.roundMu.Unlock()
	if !c.roundOpen {
		return
	}
	sc.roundDone = true
	c.doneCount++
	c.latencies = append(c.latencies, time.Since(c.roundStart).Seconds())
	if c.doneCount == len(c.sidecars) {
		close(c.roundAll)
	}
}

func (c *client) doneCountNow() int {
	c.roundMu.Lock()
	defer c.roundMu.Unlock()
	return c.doneCount
}

func (c *client) closeRound() []float64 {
	c.roundMu.Lock()
	defer c.roundMu.Unlock()
	c.roundOpen = false
	return append([]float64(nil), c.latencies...)
}

// dump writes what the first replica of each workload last received, one
// DiscoveryResponse per type: <record>/<workload index>/<phase>/<type>.pb.
func (c *client) dump(phase int) error {
	for _, sc := range c.sidecars {
		if !sc.record {
			continue
		}
		dir := filepath.Join(c.opts.record, strconv.Itoa(sc.workload), strconv.Itoa(phase))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		sc.mu.Lock()
		for typeURL, byName := range sc.raw {
			name := typeURL[strings.LastIndex(typeURL, ".")+1:] + ".pb"
			resp := &discovery.DiscoveryResponse{TypeUrl: typeURL, VersionInfo: sc.versions[typeURL]}
			keys := make([]string, 0, len(byName))
			for k := range byName {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				resp.Resources = append(resp.Resources, byName[k])
			}
			raw, err := proto.Marshal(resp)
			if err != nil {
				sc.mu.Unlock()
				return err
			}
			if err := os.WriteFile(filepath.Join(dir, name), raw, 0o644); err != nil {
				sc.mu.Unlock()
				return err
			}
		}
		sc.mu.Unlock()
	}
	return nil
}

func trigger(o options, round int) error {
	if o.triggerURL != "" {
		resp, err := http.Post(fmt.Sprintf("%s?round=%d", o.triggerURL, round), "text/plain", nil)
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("trigger: %s: %s", resp.Status, body)
		}
		return nil
	}
	tmpl, err := os.ReadFile(o.triggerTemplate)
	if err != nil {
		return err
	}
	text := bytes.ReplaceAll(tmpl, []byte("{{ROUND}}"), []byte(strconv.Itoa(round)))
	tmp := filepath.Join(filepath.Dir(o.triggerFile), "."+filepath.Base(o.triggerFile)+".tmp")
	if err := os.WriteFile(tmp, text, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, o.triggerFile)
}

func procFields(pid int) ([]string, error) {
	if pid <= 0 {
		return nil, errors.New("no server pid")
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	// The command name is in parentheses and may contain spaces.
	s := string(data)
	return strings.Fields(s[strings.LastIndexByte(s, ')')+2:]), nil
}

// processTree is pid and every process descended from it (a server's worker
// processes), read from /proc/<pid>/task/<tid>/children.
func processTree(pid int) []int {
	tree := []int{pid}
	for i := 0; i < len(tree); i++ {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", tree[i]))
		for _, path := range tasks {
			data, err := os.ReadFile(path)
			if err != nil {
				continue
			}
			for _, field := range strings.Fields(string(data)) {
				if child, err := strconv.Atoi(field); err == nil {
					tree = append(tree, child)
				}
			}
		}
	}
	return tree
}

// cpuSeconds is the CPU time (user + system) of pid and its descendants.
func cpuSeconds(pid int) (float64, error) {
	if _, err := procFields(pid); err != nil {
		return 0, err
	}
	total := 0.0
	for _, p := range processTree(pid) {
		f, err := procFields(p)
		if err != nil {
			continue // exited meanwhile
		}
		// Fields after the name start at field 3 (state); utime is 14, stime 15.
		utime, _ := strconv.ParseFloat(f[11], 64)
		stime, _ := strconv.ParseFloat(f[12], 64)
		total += (utime + stime) / clockTicks
	}
	return total, nil
}

// rssMiB is the resident memory of pid and its descendants (pages shared between
// them counted once per process).
func rssMiB(pid int) (float64, error) {
	total, found := 0.0, false
	for _, p := range processTree(pid) {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(line, "VmRSS:") {
				kb, err := strconv.ParseFloat(strings.Fields(line)[1], 64)
				if err == nil {
					total += kb / 1024
					found = true
				}
			}
		}
	}
	if !found {
		return 0, errors.New("no VmRSS")
	}
	return total, nil
}

func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	if i < 0 {
		i = 0
	}
	return sorted[i]
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return quantile(s, 0.5)
}

func round3(x float64) float64 { return math.Round(x*1000) / 1000 }
func round1(x float64) float64 { return math.Round(x*10) / 10 }
func roundAll(xs []float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = round3(x)
	}
	return out
}
