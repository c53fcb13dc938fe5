/*
 * byte-counter: a network (L4) filter counting the bytes of each connection.
 *
 * Configuration:
 *   plain text          the counters' prefix
 *   {"name": "..."}     JSON
 *
 * Defines the counters <prefix>.downstream_bytes (client to upstream),
 * <prefix>.upstream_bytes (upstream to client) and <prefix>.connections. Run it as
 * a WasmPlugin with type: NETWORK: Envoy then calls the connection callbacks below
 * instead of the HTTP ones, with the raw bytes whatever the protocol.
 */
#include "proxy_wasm.h"

const char EXAMPLE_NAME[] = "byte_counter";

typedef struct {
  uint32_t downstream;
  uint32_t upstream;
  uint32_t connections;
} state_t;

void example_free(void *state) { free(state); }

static int define(const text_t *prefix, const char *suffix, uint32_t *id) {
  size_t k = strlen(suffix);
  char *name = malloc(prefix->size + k);
  if (name == NULL) return 0;
  memcpy(name, prefix->data, prefix->size);
  memcpy(name + prefix->size, suffix, k);
  int ok = proxy_define_metric(METRIC_COUNTER, name, prefix->size + k, id) == WASM_OK;
  free(name);
  return ok;
}

int example_configure(const char *config, size_t size, void **out) {
  text_t prefix = {NULL, 0};
  const char *error = NULL;
  if (config_is_json(config, size)) {
    int found = json_string_member(config, size, "name", &prefix, &error);
    if (found <= 0) {
      log_text(LOG_ERROR, "byte-counter: invalid JSON configuration: ",
               found < 0 ? error : "needs a \"name\" string", NULL, NULL);
      return 0;
    }
  } else {
    prefix = text_copy(config, size);
  }
  if (prefix.data == NULL || prefix.size == 0) {
    log_text(LOG_ERROR, "byte-counter: needs a counter prefix", NULL, NULL, NULL);
    free(prefix.data);
    return 0;
  }
  state_t *state = malloc(sizeof *state);
  int ok = state != NULL && define(&prefix, ".downstream_bytes", &state->downstream) &&
           define(&prefix, ".upstream_bytes", &state->upstream) &&
           define(&prefix, ".connections", &state->connections);
  free(prefix.data);
  if (!ok) {
    log_text(LOG_ERROR, "byte-counter: cannot define its counters", NULL, NULL, NULL);
    free(state);
    return 0;
  }
  *out = state;
  return 1;
}

/* An HTTP filter of this module would see requests only; it counts nothing there. */
int32_t example_request_headers(void *state, uint32_t context_id) {
  (void)state;
  (void)context_id;
  return ACTION_CONTINUE;
}

EXPORT(proxy_on_new_connection)
int32_t proxy_on_new_connection(uint32_t context_id) {
  state_t *state = example_state_of(context_id);
  if (state != NULL) proxy_increment_metric(state->connections, 1);
  return ACTION_CONTINUE;
}

EXPORT(proxy_on_downstream_data)
int32_t proxy_on_downstream_data(uint32_t context_id, size_t data_size, uint32_t end_of_stream) {
  (void)end_of_stream;
  state_t *state = example_state_of(context_id);
  if (state != NULL && data_size > 0) proxy_increment_metric(state->downstream, (int64_t)data_size);
  return ACTION_CONTINUE;
}

EXPORT(proxy_on_upstream_data)
int32_t proxy_on_upstream_data(uint32_t context_id, size_t data_size, uint32_t end_of_stream) {
  (void)end_of_stream;
  state_t *state = example_state_of(context_id);
  if (state != NULL && data_size > 0) proxy_increment_metric(state->upstream, (int64_t)data_size);
  return ACTION_CONTINUE;
}
