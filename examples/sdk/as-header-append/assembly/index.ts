// as-header-append adds `x-as-header-append: <configuration>` to every request, built
// with the AssemblyScript proxy-wasm SDK. The SDK registers the root context under
// the root id "as_header_append": a proxy must be configured with that root id.
// An empty configuration, or one with a line break, is refused in onConfigure.
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext,
  Context,
  registerRootContext,
  FilterHeadersStatusValues,
  stream_context,
  log,
  LogLevelValues,
} from "@solo-io/proxy-runtime";

class HeaderAppendRoot extends RootContext {
  onConfigure(configuration_size: u32): bool {
    super.onConfigure(configuration_size);
    const value = this.getConfiguration();
    if (value.length == 0 || value.includes("\n") || value.includes("\r")) {
      log(LogLevelValues.critical, "invalid configuration format: expected one line of text");
      return false;
    }
    log(LogLevelValues.info, "adding x-as-header-append: " + value);
    return true;
  }

  createContext(context_id: u32): Context {
    return new HeaderAppend(context_id, this);
  }
}

class HeaderAppend extends Context {
  value: string;

  constructor(context_id: u32, root_context: HeaderAppendRoot) {
    super(context_id, root_context);
    this.value = root_context.getConfiguration();
  }

  onRequestHeaders(count: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.request.add("x-as-header-append", this.value);
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => {
  return new HeaderAppendRoot(context_id);
}, "as_header_append");
