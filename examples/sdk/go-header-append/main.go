// go-header-append adds one header to every request, built with the proxy-wasm Go SDK.
//
// Configuration: a JSON object {"name": "x-...", "value": "..."}. Anything else is
// refused in OnPluginStart with a log line saying why, so the proxy (and meshext's
// pre-flight) rejects the configuration.
package main

import (
	"encoding/json"
	"strings"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"
)

func main() {}

func init() {
	proxywasm.SetVMContext(&vm{})
}

type vm struct {
	types.DefaultVMContext
}

func (*vm) NewPluginContext(uint32) types.PluginContext { return &plugin{} }

type header struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

type plugin struct {
	types.DefaultPluginContext
	header header
}

func (p *plugin) OnPluginStart(size int) types.OnPluginStartStatus {
	data, err := proxywasm.GetPluginConfiguration()
	if err != nil && size > 0 {
		proxywasm.LogCriticalf("cannot read the configuration: %v", err)
		return types.OnPluginStartStatusFailed
	}
	if err := json.Unmarshal(data, &p.header); err != nil {
		proxywasm.LogCriticalf("invalid configuration format: %v", err)
		return types.OnPluginStartStatusFailed
	}
	if p.header.Name == "" || strings.ContainsAny(p.header.Name+p.header.Value, "\r\n") {
		proxywasm.LogCritical("invalid configuration: name must be a header name and value one line")
		return types.OnPluginStartStatusFailed
	}
	proxywasm.LogInfof("adding header %s", p.header.Name)
	return types.OnPluginStartStatusOK
}

func (p *plugin) NewHttpContext(uint32) types.HttpContext {
	return &request{header: p.header}
}

type request struct {
	types.DefaultHttpContext
	header header
}

func (r *request) OnHttpRequestHeaders(int, bool) types.Action {
	if err := proxywasm.AddHttpRequestHeader(r.header.Name, r.header.Value); err != nil {
		proxywasm.LogErrorf("cannot add header: %v", err)
	}
	return types.ActionContinue
}
