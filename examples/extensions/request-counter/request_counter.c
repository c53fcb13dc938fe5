/*
 * request-counter: counts requests in an Envoy counter.
 *
 * Configuration:
 *   plain text          the counter's name
 *   {"name": "..."}     JSON
 *
 * The counter is defined when the plugin is configured and incremented once per
 * request; Envoy sums it over all worker VMs and shows it in /stats.
 */
#include "proxy_wasm.h"

const char EXAMPLE_NAME[] = "request_counter";

typedef struct {
  uint32_t counter;
} state_t;

void example_free(void *state) { free(state); }

static int valid_metric_name(const char *name, size_t size) {
  if (size == 0) return 0;
  for (size_t i = 0; i < size; i++) {
    char c = name[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          c == '_' || c == '.' || c == '-' || c == ':'))
      return 0;
  }
  return 1;
}

int example_configure(const char *config, size_t size, void **out) {
  text_t name = {NULL, 0};
  const char *error = NULL;
  if (config_is_json(config, size)) {
    int found = json_string_member(config, size, "name", &name, &error);
    if (found <= 0) {
      log_text(LOG_ERROR, "request-counter: invalid JSON configuration: ",
               found < 0 ? error : "needs a \"name\" string", NULL, NULL);
      return 0;
    }
  } else {
    name = text_copy(config, size);
  }
  if (name.data == NULL || !valid_metric_name(name.data, name.size)) {
    log_text(LOG_ERROR, "request-counter: invalid counter name '",
             name.data != NULL ? name.data : "",
             "' (letters, digits, '_', '.', '-', ':')", NULL);
    free(name.data);
    return 0;
  }
  state_t *state = malloc(sizeof *state);
  int ok = state != NULL &&
           proxy_define_metric(METRIC_COUNTER, name.data, name.size, &state->counter) == WASM_OK;
  if (!ok) {
    log_text(LOG_ERROR, "request-counter: cannot define counter '", name.data, "'", NULL);
    free(state);
    free(name.data);
    return 0;
  }
  free(name.data);
  *out = state;
  return 1;
}

int32_t example_request_headers(void *p, uint32_t context_id) {
  (void)context_id;
  state_t *state = p;
  proxy_increment_metric(state->counter, 1);
  return ACTION_CONTINUE;
}
